"""Evaluation, the official way: greedy generation (`generation`), the official metrics (`metrics`), the
membership-inference attacks (`mia`), MMLU and the synthetic utility set (`mmlu`), one call that does
all of them (`evaluate`), and what people read: the leaderboard (`leaderboard`) and plots (`plots`)."""
