from prometheus_client import Counter

TURNS_SAVED = Counter("parley_history_turns_saved_total", "Turn results saved", ["status"])
TURNS_BEGUN = Counter("parley_history_turns_begun_total", "User messages stored")
