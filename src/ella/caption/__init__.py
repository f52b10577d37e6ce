"""Dense recaptioning, the data engine's first half: `ella caption DATA --captioner NAME --out SET`
writes one caption set per captioner beside the data (`sidecar`), over every source `ella train`
reads (`sources`), with any image-text-to-text model or a plugin's captioner (`captioners`);
`ella train` reads the sets through its `captions` config (`CaptionMix`)."""
