"""GPU checks, skipped without CUDA: half precision on a GPU gives what fp32 on the CPU gives."""

import numpy as np
import pytest
import torch
from test_connector import _perturbed

from ella import ELLA
from ella.text_encoders import TextFeatures, pad_features

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_batch_on_gpu_matches_the_cpu_loop(dtype):
    model = _perturbed(ELLA.from_preset("sd15-t5xl"))
    lengths = [7, 48, 19, 96]
    prompts = [torch.randn(1, n, 2048) for n in lengths]
    padded = pad_features([TextFeatures(p, torch.ones(p.shape[:2], dtype=torch.long)) for p in prompts])
    batch, mask = padded.hidden_states, padded.attention_mask
    t = torch.tensor([5, 250, 500, 999])
    with torch.no_grad():
        reference = torch.cat([model(p, t[i]) for i, p in enumerate(prompts)])  # fp32, CPU, one at a time
        model.to("cuda", dtype)
        batched = model(batch.to("cuda", dtype), t.to("cuda"), mask.to("cuda")).float().cpu()
    err = (batched - reference).abs().max() / reference.abs().max()
    assert err < 8 * torch.finfo(dtype).eps, f"relative error {err:.3g}"  # a few roundings through 6 blocks


def test_shipped_shapes_pipeline_fp16_on_gpu_matches_fp32_on_cpu():
    from ella.shapes.models import load_shapes_pipeline

    prompt = "An image of two flat shapes on a gray background: a large red circle at the top left and a small blue square at the bottom right."
    images = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "float16")):
        pipe = load_shapes_pipeline(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        # a CPU generator draws the same starting noise for both devices
        images[device] = pipe(prompt, num_inference_steps=20, output_type="np",
                              generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(images["cuda"]).all()
    diff = np.abs(images["cuda"] - images["cpu"])
    assert diff.mean() < 0.02, f"mean {diff.mean():.4f}, max {diff.max():.4f}"
