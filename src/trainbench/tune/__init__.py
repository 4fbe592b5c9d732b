"""python -m trainbench.tune [overrides]: measure the speed settings on this machine and name the fastest.

For the configured run (model, batch size, data), each candidate setting trains a few steps with the same
build, flags (TF32, cuDNN autotuning, phase clocks), loop and clocks as a real run, after the untimed warm-up a
run does. Stages, so that a few minutes suffice:
  1. compute settings (precision x channels_last) on the device loader, which has no data-loading cost;
  2. the data pipeline (loader=torch with a few worker counts, loader=device) at the winning compute
     settings, interleaved with the lab config (loader=torch, workers=2, fp32) and stage 1's best;
  3. compile=true on the best so far against it and the lab config, while half the budget is left.
Repeats are interleaved (round-robin over a stage's candidates), so load that drifts during the tuner lands in
every candidate's noise. Each pass starts a fresh iterator, so DataLoader workers start as in every epoch; its
throughput is projected over one real epoch (the first batch, start-up included, once; the later batches' mean
for the rest). A setting is named the winner only when it beats the lab config beyond the noise (Welch's t over
the repeats); among settings tied with the fastest, the one with the fewest changes from the lab config wins.
Otherwise: "no setting beats the lab config here", and the preset is the lab config.
Writes tune.csv and preset.yaml to tune.out (default outputs/tune/<date>_<time>) and the preset to the user's
cache (see trainbench.presets), keyed by machine, torch, model, batch size and data:
`python train.py experiment=fastest` applies it only where all of them match.
"""
