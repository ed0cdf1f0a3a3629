"""CXR-IRGen-style image-report pair synthesis (`rrg-stage synthesize`).

- schedule: the diffusion noise schedule, the training target and the DDIM sampler;
- unet: the small pixel-space U-Net that predicts the noise from a timestep and a prompt;
- prompts: the prompt of a report (its text embedding and a reference image's embedding);
- vision: the conditional model, its training loop (resumable) and guided sampling;
- pairs: synthetic studies written as an R2Gen folder and a dataset.h5 built by preprocessing's code;
- quality: Fréchet distance, clinical agreement and the image grid.
"""
