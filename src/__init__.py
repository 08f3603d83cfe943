"""ENAS micro search in TensorFlow 2.

Data flows one way: folders -> arrays -> tf.data -> model -> training loop ->
checkpoints and reports. The modules, lowest layer first (each imports only from
those above it in this list):

  configs, arc, stats, ops, run_dir, summaries, phase_timer   what everything uses
  image_cache, data           image folders -> cached uint8 arrays -> tf.data batches
  distribute, checkpoints     tf.distribute strategies; checkpoint restore and save
  reporting, serving          log lines, progress bars, pictures; the SavedModel export
  shared_child, fixed_child   the two children, on the ops of ops.py
  controller, controller_step the arc sampler and its REINFORCE update
  optim                       SGDR cosine schedule, flat Nesterov SGD, loss scaling
  child_steps                 compiled train and evaluation steps of both children
  epoch_loop                  one epoch of steps: progress, log, NaN and signal stops
  selection                   scoring arcs on fixed batches, the lift, the final choice
  harness                     what every run shares: folder, lock, signals, restore,
                              the checkpoint at each epoch's end
  search, fixed_train         the two loops: their state, epoch body and evaluation
  benchmark                   timings of both loops' steps (python -m src.benchmark)
"""
