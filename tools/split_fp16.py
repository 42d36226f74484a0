"""Split a SAM-family safetensors checkpoint into fp16 encoder and decoder files (each small enough to move)."""

import sys

from safetensors.torch import load_file, save_file

src, out = sys.argv[1], sys.argv[2]
state = load_file(src)
encoder = {k: v.half() for k, v in state.items() if k.startswith("image_encoder.")}
decoder = {k: v.half() for k, v in state.items() if not k.startswith("image_encoder.")}
save_file(encoder, f"{out}/encoder_fp16.safetensors")
save_file(decoder, f"{out}/decoder_fp16.safetensors")
print({"encoder_tensors": len(encoder), "decoder_tensors": len(decoder)})
