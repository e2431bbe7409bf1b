"""`python -m trainer.tiny`: builds builtin:tiny in the current directory, the base that adapters trained on it name.

The command users know; the model itself lives in trainer/builtin/.
"""

if __name__ == "__main__":
    from trainer.builtin.tiny import main

    main()
