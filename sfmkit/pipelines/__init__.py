"""User-facing jobs that chain stages (reconstruct, retrieve, synth, labels, night subsets),
and the runners of whole methods that evaluations compare."""
