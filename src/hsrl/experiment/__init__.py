"""`hsrl experiment`: K seeds of each arm (baseline and hidden-state policy, AWR and/or online PPO), each
evaluated with the hidden-state ablations, aggregated into interval estimates (rliable), sequentially or as
Ray tasks. `hsrl.experiment.config` holds the verb, `runs` the per-run work, `stats` the estimators,
`report` the tables and figures, `offline` an evaluation on held-out data."""
