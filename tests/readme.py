"""The README's indented blocks, as a user copies them: tests load them verbatim, so the README cannot drift."""

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks(section: str) -> list[str]:
    """The indented blocks of the README section titled `section` ("## hosts.yaml"), in order, unindented."""
    text = README.read_text().split(f"{section}\n", 1)[1].split("\n## ", 1)[0]
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("    "):
            current.append(line[4:])
        elif current and not line.strip():
            blocks.append("\n".join(current) + "\n")
            current = []
    return blocks + (["\n".join(current) + "\n"] if current else [])
