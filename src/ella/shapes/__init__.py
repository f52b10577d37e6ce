"""ShapesWorld: the ELLA setting in miniature (scenes, captions, questions, judge, models)."""
