"""Results and views: one record per run (`records`), the two baselines (`baselines`), paired tests (`paired`),
and the leaderboard in the terminal, Markdown, HTML and CSV (`python -m eval.leaderboard`)."""
