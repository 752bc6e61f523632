"""The benchmark domains, apart from the core: the compositional shapes domain (`shapes`: scenes,
captions and their grammar), its detector (`detect`), the evaluation report (`evaluate`) and the
Fashion-MNIST judge (`classifier`). The core never imports from here; a model folder names its
domain's grammar for reranking (`cogview.pipeline.RESTATERS`)."""
