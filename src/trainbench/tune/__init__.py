"""python -m trainbench.tune [overrides]: measure the speed settings on this machine and name the fastest.

For the configured run (model, batch size, data), each candidate setting trains a few steps with the same
loop and clocks as a real run (train_epoch, after the untimed warm_up a run does), and the candidates are
ranked by images/s. Stages, so that a few minutes suffice:
  1. compute settings (precision x channels_last) on the device loader, which has no data-loading cost;
  2. the data pipeline (loader=torch with a few worker counts, loader=device) at the winning compute
     settings, where data loading matters most; the lab config (loader=torch, workers=2, fp32) as well;
  3. compile=true on the best so far, while enough of the budget is left (its compile time is its own column).
Throughput = images / (data + compute time) over the timed steps; the first warmup_steps of every
measurement (worker start-up, first-batch effects) are drawn but not counted. Two candidates within
2 standard errors of each other (from repeats) are reported as a tie, not as an order.
Writes tune.csv and winner.yaml to tune.out (default outputs/tune/<date>_<time>) and conf/tuned/winner.yaml,
which `python train.py experiment=fastest` uses.
"""
