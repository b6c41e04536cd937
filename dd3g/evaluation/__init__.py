"""Evaluation-only code: image metrics (PSNR, SSIM, LPIPS) and per-sample Gaussian fitting, used by the
benchmarks, the training logs and the model cards; nothing in the generation path imports it."""
