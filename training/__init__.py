"""Training stages (installed as ganseg.training): GAN, few-shot heads, distilled UNet."""
