"""The diffusion UNet (`openaimodel`) and its small helpers (`util`)."""
