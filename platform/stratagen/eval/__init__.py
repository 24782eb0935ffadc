"""Evaluation: sample-quality metrics (Inception, in-domain, SWD) and tokenizer reconstruction quality."""
from stratagen.eval.classifier import IN_DOMAIN_EXTRACTOR, DomainClassifier, InDomainExtractor, InDomainMetric
from stratagen.eval.fidelity import (InceptionMetric, Metric, ReferenceSet, from_uint8,
                                     frechet_distance, gaussian_stats, to_uint8)
from stratagen.eval.swd import SlicedWassersteinMetric
from stratagen.eval.tokenizer_eval import evaluate_tokenizer, level_swap_examples, psnr

__all__ = [
    "IN_DOMAIN_EXTRACTOR", "DomainClassifier", "InDomainExtractor", "InDomainMetric", "InceptionMetric", "Metric",
    "ReferenceSet", "SlicedWassersteinMetric", "evaluate_tokenizer", "frechet_distance", "level_swap_examples", "from_uint8", "gaussian_stats", "psnr",
    "to_uint8",
]
