"""Training only: the epoch loop, the run as one object, the trainer, its schedule, budget and resume."""
