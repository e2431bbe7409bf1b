"""The generic chats builtin:tiny is pretrained on (trainer/builtin/pretrain.py, once, offline): requests for weather,
hotels, transfers, budgets, alarms, currency, ... in English and Chinese, each answered with one tool call whose
arguments come from the request's own words (dates, months, amounts, names, cities, enums), or a plain reply that
repeats them. Never the HR functions of tasks/hr or their wording: the demo's LoRA must learn those, and its eval
suite compares with this base (tests/test_tiny_pretrained.py checks both).
"""

import json

_STR = {"type": "string"}
_DATE = {"type": "string", "format": "date"}
_MONTH = {"type": "string", "pattern": "YYYY-MM"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_CITIES = [
    ("Paris", "巴黎"),
    ("Tokyo", "东京"),
    ("London", "伦敦"),
    ("Berlin", "柏林"),
    ("Hangzhou", "杭州"),
    ("Chengdu", "成都"),
    ("Sydney", "悉尼"),
    ("Toronto", "多伦多"),
    ("Cairo", "开罗"),
    ("Lima", "利马"),
    ("Oslo", "奥斯陆"),
    ("Seoul", "首尔"),
    ("Madrid", "马德里"),
    ("Wuhan", "武汉"),
    ("Nairobi", "内罗毕"),
]
_NAMES = [
    "Alice",
    "Bob",
    "Carlos",
    "Diana",
    "Ethan",
    "Fatima",
    "George",
    "Hannah",
    "Ivan",
    "Julia",
    "Kenji",
    "Maria",
    "王芳",
    "李伟",
    "张敏",
    "刘洋",
    "陈静",
    "杨磊",
    "赵丽",
    "黄强",
    "周杰",
    "吴霞",
]
_TOPICS = [
    "solar panels",
    "chess openings",
    "Roman history",
    "green tea",
    "electric bikes",
    "jazz piano",
    "量子计算",
    "深海鱼类",
    "唐诗",
    "火山",
    "机器学习",
    "咖啡豆",
]
_TODOS = [
    ("water the plants", "浇花"),
    ("call the dentist", "给牙医打电话"),
    ("buy milk", "买牛奶"),
    ("renew my passport", "续签护照"),
    ("pick up the kids", "接孩子"),
    ("back up my laptop", "备份电脑"),
]
_SUBJECTS = [
    "Project update",
    "Lunch plans",
    "Quarterly report",
    "Team dinner",
    "Weekly sync",
    "项目进度",
    "会议纪要",
    "周末安排",
    "新产品发布",
]
_ARTISTS = ["Taylor Swift", "Miles Davis", "Adele", "Coldplay", "周杰伦", "王菲", "邓紫棋", "Beyonce"]
_DISHES = [
    ("pancakes", "煎饼"),
    ("dumplings", "饺子"),
    ("lasagna", "千层面"),
    ("mapo tofu", "麻婆豆腐"),
    ("curry", "咖喱"),
]
_CURRENCIES = {"USD": "美元", "EUR": "欧元", "JPY": "日元", "GBP": "英镑", "CNY": "人民币"}
_LANGUAGES = {
    "fr": ("French", "法语"),
    "de": ("German", "德语"),
    "es": ("Spanish", "西班牙语"),
    "en": ("English", "英语"),
    "ja": ("Japanese", "日语"),
}
_NEWS = {"sports": "体育", "tech": "科技", "business": "财经", "science": "科学"}
_ROOMS = {"kitchen": "厨房", "bedroom": "卧室", "office": "书房", "garage": "车库"}
_BILLS = {"electricity": "电费", "water": "水费", "gas": "燃气费", "internet": "网费"}
_SYMBOLS = ["AAPL", "TSLA", "NVDA", "MSFT", "BABA", "AMZN"]
_PHRASES = [
    "The sky is clear today.",
    "I love reading books.",
    "See you tomorrow.",
    "Good morning, everyone.",
    "明天见。",
    "我喜欢读书。",
    "今天天气很好。",
    "谢谢你的帮助。",
]


def _date(r):
    return f"{r.randint(2024, 2029)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"


def _month(r):
    return f"{r.randint(2024, 2029)}-{r.randint(1, 12):02d}"


def _time(r):
    return f"{r.randint(5, 22):02d}:{r.choice([0, 10, 15, 20, 30, 45, 50]):02d}"


GENERIC_FUNCTIONS = {}  # name -> (its JSON schema, a function of a Random giving (request, arguments))


def _generic(name: str, properties: dict):
    def register(make):
        schema = {
            "type": "function",
            "function": {"name": name, "parameters": {"type": "object", "properties": properties}},
        }
        GENERIC_FUNCTIONS[name] = (schema, make)
        return make

    return register


def _either(r, en, zh):
    return r.choice(en) if r.random() < 0.5 else r.choice(zh)


@_generic("get_weather", {"location": _STR, "date": _DATE})
def g_weather(r):
    en, zh = r.choice(_CITIES)
    d = _date(r)
    if r.random() < 0.5:
        return r.choice([f"What's the weather in {en} on {d}?", f"Will it rain in {en} on {d}?"]), {
            "location": en,
            "date": d,
        }
    return r.choice([f"{zh}{d}天气怎么样？", f"查一下{d}{zh}的天气。"]), {"location": zh, "date": d}


@_generic("get_forecast", {"location": _STR, "days": _INT})
def g_forecast(r):
    en, zh = r.choice(_CITIES)
    n = r.randint(2, 14)
    if r.random() < 0.5:
        return r.choice([f"Give me a {n}-day forecast for {en}.", f"Forecast for {en}, next {n} days."]), {
            "location": en,
            "days": n,
        }
    return r.choice([f"{zh}未来{n}天的天气预报。", f"{zh}接下来{n}天天气如何？"]), {"location": zh, "days": n}


@_generic("send_email", {"to": _STR, "subject": _STR})
def g_email(r):
    n, s = r.choice(_NAMES), r.choice(_SUBJECTS)
    return _either(
        r,
        [f"Email {n} with the subject {s}.", f"Send an email to {n} about {s}."],
        [f"给{n}发邮件，主题是{s}。", f"发一封主题为{s}的邮件给{n}。"],
    ), {"to": n, "subject": s}


@_generic("set_alarm", {"time": _STR})
def g_alarm(r):
    t = _time(r)
    return _either(
        r, [f"Set an alarm for {t}.", f"Wake me up at {t}."], [f"帮我定一个{t}的闹钟。", f"明早{t}叫醒我。"]
    ), {"time": t}


@_generic("set_timer", {"minutes": _INT})
def g_timer(r):
    n = r.randint(1, 90)
    return _either(
        r,
        [f"Start a timer for {n} minutes.", f"Set a {n} minute timer."],
        [f"计时{n}分钟。", f"设置一个{n}分钟的计时器。"],
    ), {"minutes": n}


@_generic("create_event", {"title": _STR, "date": _DATE})
def g_event(r):
    en, zh = r.choice(_TODOS)
    d = _date(r)
    if r.random() < 0.5:
        return r.choice([f"Add '{en}' to my calendar on {d}.", f"Create an event {en} on {d}."]), {
            "title": en,
            "date": d,
        }
    return r.choice([f"在{d}的日程里加上{zh}。", f"{d}新建日程：{zh}。"]), {"title": zh, "date": d}


@_generic("set_reminder", {"text": _STR, "date": _DATE})
def g_remind(r):
    en, zh = r.choice(_TODOS)
    d = _date(r)
    if r.random() < 0.5:
        return r.choice([f"Remind me to {en} on {d}.", f"On {d}, remind me to {en}."]), {"text": en, "date": d}
    return r.choice([f"{d}提醒我{zh}。", f"提醒我在{d}{zh}。"]), {"text": zh, "date": d}


@_generic("get_calendar", {"month": _MONTH})
def g_cal(r):
    m = _month(r)
    return _either(
        r, [f"What's on my calendar in {m}?", f"Show my schedule for {m}."], [f"{m}有哪些日程？", f"看看我{m}的安排。"]
    ), {"month": m}


@_generic(
    "convert_currency",
    {
        "amount": _NUM,
        "from_currency": {"type": "string", "enum": list(_CURRENCIES)},
        "to_currency": {"type": "string", "enum": list(_CURRENCIES)},
    },
)
def g_cur(r):
    a, b = r.sample(list(_CURRENCIES), 2)
    amt = r.choice([r.randint(1, 5000), round(r.uniform(1, 999), 2)])
    return _either(
        r,
        [f"Convert {amt} {a} to {b}.", f"How much is {amt} {a} in {b}?"],
        [f"把{amt}{_CURRENCIES[a]}换成{_CURRENCIES[b]}。", f"{amt}{_CURRENCIES[a]}等于多少{_CURRENCIES[b]}？"],
    ), {"amount": amt, "from_currency": a, "to_currency": b}


@_generic("play_music", {"artist": _STR})
def g_music(r):
    a = r.choice(_ARTISTS)
    return _either(r, [f"Play some songs by {a}.", f"I want to hear {a}."], [f"播放{a}的歌。", f"来点{a}的音乐。"]), {
        "artist": a
    }


@_generic("translate_text", {"text": _STR, "target_language": {"type": "string", "enum": list(_LANGUAGES)}})
def g_tr(r):
    p = r.choice(_PHRASES)
    code = r.choice(list(_LANGUAGES))
    en, zh = _LANGUAGES[code]
    return _either(
        r,
        [f'Translate "{p}" into {en}.', f'How do you say "{p}" in {en}?'],
        [f"把“{p}”翻译成{zh}。", f"“{p}”用{zh}怎么说？"],
    ), {"text": p, "target_language": code}


@_generic("search_web", {"query": _STR})
def g_search(r):
    q = r.choice(_TOPICS)
    return _either(r, [f"Search the web for {q}.", f"Look up {q} online."], [f"搜索一下{q}。", f"帮我在网上查{q}。"]), {
        "query": q
    }


@_generic("book_train", {"origin": _STR, "destination": _STR, "date": _DATE})
def g_train(r):
    (a, az), (b, bz) = r.sample(_CITIES, 2)
    d = _date(r)
    if r.random() < 0.5:
        return r.choice([f"Book a train from {a} to {b} on {d}.", f"I need a train ticket {a} to {b}, {d}."]), {
            "origin": a,
            "destination": b,
            "date": d,
        }
    return r.choice([f"订一张{d}从{az}到{bz}的火车票。", f"帮我买{d}{az}去{bz}的车票。"]), {
        "origin": az,
        "destination": bz,
        "date": d,
    }


@_generic("get_stock_price", {"symbol": _STR})
def g_stock(r):
    s = r.choice(_SYMBOLS)
    return _either(
        r, [f"What's the price of {s} stock?", f"Quote {s} for me."], [f"{s}的股价是多少？", f"查一下{s}股票。"]
    ), {"symbol": s}


@_generic("call_contact", {"name": _STR})
def g_call(r):
    n = r.choice(_NAMES)
    return _either(r, [f"Call {n}.", f"Phone {n} for me."], [f"给{n}打电话。", f"拨打{n}的电话。"]), {"name": n}


@_generic("send_message", {"to": _STR, "text": _STR})
def g_msg(r):
    n, p = r.choice(_NAMES), r.choice(_PHRASES)
    return _either(r, [f"Text {n}: {p}", f"Send {n} a message saying {p}"], [f"给{n}发消息：{p}", f"告诉{n}：{p}"]), {
        "to": n,
        "text": p,
    }


@_generic("get_news", {"topic": {"type": "string", "enum": list(_NEWS)}})
def g_news(r):
    t = r.choice(list(_NEWS))
    return _either(
        r,
        [f"Any {t} news today?", f"Show me the latest {t} headlines."],
        [f"今天有什么{_NEWS[t]}新闻？", f"看看最新的{_NEWS[t]}头条。"],
    ), {"topic": t}


@_generic("track_package", {"tracking_number": _STR})
def g_pkg(r):
    c = r.choice(["SF", "YT", "JD", "UPS"]) + str(r.randint(10**6, 10**9))
    return _either(
        r, [f"Where is my package {c}?", f"Track parcel {c}."], [f"查一下快递{c}。", f"我的包裹{c}到哪了？"]
    ), {"tracking_number": c}


@_generic("calculate", {"expression": _STR})
def g_calc(r):
    a, b = r.randint(2, 999), r.randint(2, 999)
    op = r.choice(["+", "-", "*"])
    e = f"{a}{op}{b}"
    return _either(r, [f"Compute {e}.", f"What is {e}?"], [f"算一下{e}。", f"{e}等于多少？"]), {"expression": e}


@_generic("set_thermostat", {"temperature": _INT})
def g_thermo(r):
    n = r.randint(16, 30)
    return _either(
        r,
        [f"Set the thermostat to {n} degrees.", f"Make it {n} degrees in here."],
        [f"把空调调到{n}度。", f"温度设成{n}度。"],
    ), {"temperature": n}


@_generic("book_table", {"people": _INT, "date": _DATE})
def g_table(r):
    n = r.randint(1, 12)
    d = _date(r)
    return _either(
        r,
        [f"Book a table for {n} on {d}.", f"Reserve dinner for {n} people, {d}."],
        [f"订{d}的{n}人桌。", f"帮我预订{d}晚上{n}位。"],
    ), {"people": n, "date": d}


@_generic("get_local_time", {"city": _STR})
def g_time(r):
    en, zh = r.choice(_CITIES)
    if r.random() < 0.5:
        return r.choice([f"What time is it in {en}?", f"Current time in {en}?"]), {"city": en}
    return r.choice([f"{zh}现在几点？", f"查一下{zh}的当地时间。"]), {"city": zh}


@_generic("find_recipe", {"dish": _STR})
def g_recipe(r):
    en, zh = r.choice(_DISHES)
    if r.random() < 0.5:
        return r.choice([f"Find a recipe for {en}.", f"How do I cook {en}?"]), {"dish": en}
    return r.choice([f"找一个{zh}的菜谱。", f"{zh}怎么做？"]), {"dish": zh}


@_generic("turn_on_lights", {"room": {"type": "string", "enum": list(_ROOMS)}})
def g_lights(r):
    k = r.choice(list(_ROOMS))
    return _either(
        r,
        [f"Turn on the lights in the {k}.", f"Lights on in the {k}, please."],
        [f"打开{_ROOMS[k]}的灯。", f"把{_ROOMS[k]}的灯开一下。"],
    ), {"room": k}


@_generic("get_battery_level", {})
def g_batt(r):
    return _either(
        r, ["How much battery does my phone have?", "Check the battery level."], ["手机还有多少电？", "查一下电量。"]
    ), {}


@_generic("pay_bill", {"utility": {"type": "string", "enum": list(_BILLS)}, "amount": _NUM})
def g_bill(r):
    k = r.choice(list(_BILLS))
    a = r.randint(10, 900)
    return _either(
        r,
        [f"Pay the {k} bill of {a} dollars.", f"Pay {a} for {k}."],
        [f"缴纳{_BILLS[k]}{a}元。", f"帮我交{a}元{_BILLS[k]}。"],
    ), {"utility": k, "amount": a}


@_generic("get_population", {"city": _STR, "year": _INT})
def g_pop(r):
    en, zh = r.choice(_CITIES)
    y = r.randint(1950, 2030)
    if r.random() < 0.5:
        return r.choice([f"What was the population of {en} in {y}?", f"Population of {en}, {y}?"]), {
            "city": en,
            "year": y,
        }
    return r.choice([f"{y}年{zh}有多少人口？", f"查一下{zh}{y}年的人口。"]), {"city": zh, "year": y}


# ---- v7: more functions whose arguments are copied from the request (two dates, amounts, months, enums) ----------
_ACTIVITIES = {"running": "跑步", "cycling": "骑车", "swimming": "游泳", "yoga": "瑜伽"}
_BUDGETS = {"groceries": "买菜", "fuel": "油费", "rent": "房租", "travel": "旅行"}
_CLINICS = {"dentist": "牙科", "eye": "眼科", "skin": "皮肤科", "heart": "心内科"}
_PLANS = {"basic": "基础", "pro": "专业", "family": "家庭"}
_SEATS = {"window": "靠窗", "aisle": "过道", "middle": "中间"}
_CHARITIES = ["Red Cross", "UNICEF", "Save the Children", "WWF", "希望工程", "壹基金"]


def _two_dates(r):
    """Two dates in order, often the same day or a few days apart (as trips and bookings are)."""
    y, m, d = r.randint(2024, 2029), r.randint(1, 12), r.randint(1, 28)
    first = f"{y}-{m:02d}-{d:02d}"
    if r.random() < 0.3:
        return first, first
    gap = r.randint(1, 12)
    d2, m2, y2 = d + gap, m, y
    if d2 > 28:
        d2, m2 = d2 - 28, m + 1
        if m2 > 12:
            m2, y2 = 1, y + 1
    return first, f"{y2}-{m2:02d}-{d2:02d}"


def _amount(r):
    return r.choice([r.randint(5, 99), r.randint(100, 999), r.randint(1000, 9999), r.randint(1, 50) * 10])


@_generic("book_hotel", {"city": _STR, "check_in": _DATE, "check_out": _DATE})
def g_hotel(r):
    en, zh = r.choice(_CITIES)
    a, b = _two_dates(r)
    if r.random() < 0.5:
        return r.choice(
            [
                f"Book a hotel in {en} from {a} to {b}.",
                f"I need a room in {en}, check in {a}, check out {b}.",
                f"Find me a hotel in {en}: {a} until {b}.",
            ]
        ), {"city": en, "check_in": a, "check_out": b}
    return r.choice([f"帮我订{zh}的酒店，{a}入住，{b}退房。", f"我要在{zh}住酒店，从{a}到{b}。"]), {
        "city": zh,
        "check_in": a,
        "check_out": b,
    }


@_generic("rent_car", {"city": _STR, "start_date": _DATE, "end_date": _DATE})
def g_car(r):
    en, zh = r.choice(_CITIES)
    a, b = _two_dates(r)
    if r.random() < 0.5:
        return r.choice(
            [
                f"Rent a car in {en} from {a} to {b}.",
                f"I want a rental car in {en}, pick up {a}, return {b}.",
                f"Car hire in {en}: start {a}, end {b}.",
            ]
        ), {"city": en, "start_date": a, "end_date": b}
    return r.choice([f"我想在{zh}租车，从{a}到{b}。", f"{zh}租一辆车，{a}至{b}。"]), {
        "city": zh,
        "start_date": a,
        "end_date": b,
    }


@_generic("plan_trip", {"destination": _STR, "start_date": _DATE, "end_date": _DATE})
def g_trip(r):
    en, zh = r.choice(_CITIES)
    a, b = _two_dates(r)
    if r.random() < 0.5:
        return r.choice(
            [
                f"Plan a trip to {en} from {a} to {b}.",
                f"I'm visiting {en}, {a} until {b}. Make an itinerary.",
                f"Trip to {en}: start {a}, end {b}.",
            ]
        ), {"destination": en, "start_date": a, "end_date": b}
    return r.choice([f"帮我规划{zh}旅行，从{a}到{b}。", f"我{a}至{b}去{zh}玩，做个行程。"]), {
        "destination": zh,
        "start_date": a,
        "end_date": b,
    }


@_generic(
    "pause_subscription", {"plan": {"type": "string", "enum": list(_PLANS)}, "start_date": _DATE, "end_date": _DATE}
)
def g_pause(r):
    k = r.choice(list(_PLANS))
    a, b = _two_dates(r)
    return _either(
        r,
        [f"Pause my {k} plan from {a} to {b}.", f"Suspend the {k} subscription: start {a}, end {b}."],
        [f"暂停我的{_PLANS[k]}套餐，从{a}到{b}。", f"{_PLANS[k]}会员{a}至{b}暂停。"],
    ), {"plan": k, "start_date": a, "end_date": b}


@_generic("cancel_reservation", {"date": _DATE})
def g_cancel(r):
    d = _date(r)
    return _either(
        r,
        [f"Cancel my restaurant reservation on {d}.", f"Call off the dinner booking for {d}.", f"Drop my {d} table."],
        [f"取消我{d}的餐厅预订。", f"{d}的订座不要了，帮我取消。"],
    ), {"date": d}


@_generic("unsubscribe", {"since": _DATE})
def g_unsub(r):
    d = _date(r)
    return _either(
        r,
        [f"Stop the newsletter that started on {d}.", f"Unsubscribe me from the mailing list I joined on {d}."],
        [f"退订我{d}开始订阅的邮件。", f"{d}订的推送不要了。"],
    ), {"since": d}


@_generic("transfer_money", {"to": _STR, "amount": _NUM})
def g_transfer(r):
    n, a = r.choice(_NAMES), _amount(r)
    return _either(
        r,
        [f"Send {a} yuan to {n}.", f"Transfer {a} dollars to {n}.", f"Pay {n} {a}."],
        [f"给{n}转账{a}元。", f"转{a}块钱给{n}。"],
    ), {"to": n, "amount": a}


@_generic("donate", {"charity": _STR, "amount": _NUM})
def g_donate(r):
    c, a = r.choice(_CHARITIES), _amount(r)
    return _either(
        r,
        [f"Donate {a} to {c}.", f"Give {a} yuan to {c}."],
        [f"向{c}捐款{a}元。", f"给{c}捐{a}块。"],
    ), {"charity": c, "amount": a}


@_generic("set_budget", {"category": {"type": "string", "enum": list(_BUDGETS)}, "amount": _NUM})
def g_budget(r):
    k, a = r.choice(list(_BUDGETS)), _amount(r)
    return _either(
        r,
        [f"Set my {k} budget to {a} yuan.", f"Limit {k} spending to {a} a month.", f"Budget {a} for {k}."],
        [f"把{_BUDGETS[k]}预算设为{a}元。", f"每月{_BUDGETS[k]}最多花{a}元。"],
    ), {"category": k, "amount": a}


@_generic("log_workout", {"activity": {"type": "string", "enum": list(_ACTIVITIES)}, "minutes": _INT})
def g_workout(r):
    k, n = r.choice(list(_ACTIVITIES)), r.randint(5, 180)
    return _either(
        r,
        [f"Log {n} minutes of {k}.", f"I did {k} for {n} minutes today."],
        [f"记录{_ACTIVITIES[k]}{n}分钟。", f"我今天{_ACTIVITIES[k]}了{n}分钟。"],
    ), {"activity": k, "minutes": n}


@_generic("book_doctor", {"department": {"type": "string", "enum": list(_CLINICS)}, "date": _DATE})
def g_doctor(r):
    k, d = r.choice(list(_CLINICS)), _date(r)
    return _either(
        r,
        [f"Book a {k} appointment on {d}.", f"I need to see the {k} doctor on {d}."],
        [f"帮我挂{d}的{_CLINICS[k]}号。", f"预约{d}{_CLINICS[k]}门诊。"],
    ), {"department": k, "date": d}


@_generic("choose_seat", {"seat": {"type": "string", "enum": list(_SEATS)}, "date": _DATE})
def g_seat(r):
    k, d = r.choice(list(_SEATS)), _date(r)
    return _either(
        r,
        [f"Give me an {k} seat on {d}." if k[0] in "aeiou" else f"Give me a {k} seat on {d}.", f"Seat for {d}: {k}."],
        [f"{d}的座位要{_SEATS[k]}的。", f"帮我选{d}{_SEATS[k]}座位。"],
    ), {"seat": k, "date": d}


@_generic("get_phone_bill", {"month": _MONTH})
def g_phone(r):
    m = _month(r)
    return _either(
        r,
        [f"Show my phone bill for {m}.", f"How much was my phone bill in {m}?", f"{m} phone bill, please."],
        [f"查询我{m}的话费。", f"{m}我的话费是多少？"],
    ), {"month": m}


@_generic("get_electricity_usage", {"month": _MONTH})
def g_power(r):
    m = _month(r)
    return _either(
        r,
        [f"How much electricity did I use in {m}?", f"Power usage for {m}."],
        [f"{m}我用了多少电？", f"查一下{m}的用电量。"],
    ), {"month": m}


@_generic("get_steps", {"date": _DATE})
def g_steps(r):
    d = _date(r)
    return _either(
        r,
        [f"How many steps did I walk on {d}?", f"Step count for {d}."],
        [f"我{d}走了多少步？", f"查一下{d}的步数。"],
    ), {"date": d}


@_generic("list_events", {"year": _INT})
def g_events(r):
    y = r.randint(2020, 2030)
    return _either(
        r,
        [f"Which concerts are on in {y}?", f"List the festivals of {y}."],
        [f"{y}年有哪些演唱会？", f"列出{y}年的音乐节。"],
    ), {"year": y}


@_generic("schedule_meeting", {"with": _STR, "date": _DATE, "time": _STR})
def g_meeting(r):
    n, d, t = r.choice(_NAMES), _date(r), _time(r)
    return _either(
        r,
        [f"Set up a meeting with {n} on {d} at {t}.", f"Meet {n}, {d} {t}."],
        [f"约{n}在{d} {t}开会。", f"{d}{t}和{n}开个会。"],
    ), {"with": n, "date": d, "time": t}


@_generic("get_wifi_password", {})
def g_wifi(r):
    return _either(
        r, ["What's the wifi password?", "Tell me the wifi password."], ["无线网密码是多少？", "告诉我WiFi密码。"]
    ), {}


_SYSTEMS = [
    None,
    "You are a helpful assistant.",
    "You are a voice assistant. Call exactly one function.",
    "你是一个智能助手。",
    "Answer with one function call.",
]


def _value(r):
    return r.choice([_date, _month, _time, lambda r: str(_amount(r)), lambda r: r.choice(_NAMES)])(r)


def echo_chat(r):
    """A chat whose reply repeats values from the request: the copying a call's arguments need, on its own."""
    if r.random() < 0.75:
        xs = [_value(r) for _ in range(r.randint(1, 4))]
        said = " ".join(xs)
        user = r.choice([f"Repeat after me: {said}", f"请重复：{said}", f"Echo {said}.", f"Say back: {said}"])
        return [{"role": "user", "content": user}, {"role": "assistant", "content": said}], None
    p = r.choice(_PHRASES)
    n = r.choice(_NAMES)
    user, reply = r.choice(
        [
            (f"Repeat after me: {p}", p),
            (f"Say hello to {n}.", f"Hello, {n}!"),
            (f"请重复：{p}", p),
            (f"跟{n}打个招呼。", f"你好，{n}！"),
        ]
    )
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}], None


def generic_chat(r, p_echo=0.12, max_tools=9, p_notools=0.5):
    """(messages, tools or None): one generic chat drawn from the Random r. With tools, 1 to max_tools functions
    are offered (the one called among them), as a task's prompt offers its own."""
    if r.random() < p_echo:
        return echo_chat(r)
    names = list(GENERIC_FUNCTIONS)
    k = r.randint(1, max_tools)
    chosen = r.sample(names, k)
    target = r.choice(chosen)
    prompt, args = GENERIC_FUNCTIONS[target][1](r)
    msgs = []
    sysm = r.choice(_SYSTEMS)
    if sysm:
        msgs.append({"role": "system", "content": sysm})
    msgs.append({"role": "user", "content": prompt})
    msgs.append(
        {
            "role": "assistant",
            "tool_calls": [
                {"type": "function", "function": {"name": target, "arguments": json.dumps(args, ensure_ascii=False)}}
            ],
        }
    )
    return msgs, (None if r.random() < p_notools else [GENERIC_FUNCTIONS[n][0] for n in chosen])
