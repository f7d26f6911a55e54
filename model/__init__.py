"""fewstep inference: schedule, denoiser, conditioning, samplers, checkpoints and the pipeline."""
