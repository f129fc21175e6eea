"""Text side of image-text models: tokenizers shared by pp ops and evaluators."""
