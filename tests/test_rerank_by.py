"""Reranking by the contrastive head, by caption likelihood or both (`rerank_by`), through the
API, the command line and `cogview eval`; and the retrieval part of the evaluation."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch
from test_evaluate import save_tiny_model, tiny_parts

from cogview.api import CogView
from cogview.bench import shapes
from cogview.cli import main
from cogview.contrastive import embed_images, embed_texts
from cogview.masks import EncodedText
from cogview.model import CogLM, coglm_config
from cogview.pipeline import Pipeline
from cogview.sampling import (
    RegionView,
    SamplingConfig,
    SamplingError,
    best_candidates,
    generate_images,
    prompt_scores,
    standardised,
)

PROMPT = "a red circle at the top left"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two untrained CogLM folders on 32 px shapes images (8x8 codes), one with a contrastive
    head and one without, sharing their tokenizer and VQVAE."""
    root = tmp_path_factory.mktemp("rerank-by")
    tok, vq_fingerprint = tiny_parts(root)
    out = {}
    for name, head in (("head", 16), ("plain", 0)):
        torch.manual_seed(1)
        out[name] = save_tiny_model(root, name, tok, vq_fingerprint, dim=32, n_layers=1,
                                    max_seq_len=128, contrastive_dim=head)
    return out


@pytest.fixture(scope="module")
def pipe(folders):
    return CogView.from_pretrained(folders["head"])


def _candidates(pipe, ids, n, seed, texts=None):
    """n candidates of one prompt, drawn as CogView draws them, without CogView."""
    texts = texts if texts is not None else [ids] * n
    return generate_images(pipe.model, pipe.tokenizer, texts, pipe.grid,
                           pipe.sampling_config(), torch.Generator().manual_seed(seed))


def _cosines(pipe, prompt, codes):
    """Cosine of each image with the prompt, straight from the embeddings."""
    text = embed_texts(pipe.model, pipe.tokenizer, [prompt])[0]
    return embed_images(pipe.model, pipe.tokenizer, codes) @ text


def _z(x: torch.Tensor) -> torch.Tensor:
    a = x.double().numpy()
    return torch.from_numpy((a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True))


# ---------------------------------------------------------------------------------------------
# the library


def test_contrastive_keeps_the_candidate_closest_to_the_prompt(pipe):
    ids = pipe.encode_prompt(PROMPT)
    codes = _candidates(pipe, ids, 16, seed=3)  # 4 images, each the best of 4
    cos = _cosines(pipe, ids, codes).view(4, 4)
    best = cos.argmax(1)
    assert best.tolist() != [0, 0, 0, 0]  # the reranker picks, not the generation order
    out = pipe.generate(PROMPT, 4, rerank=4, rerank_by="contrastive", seed=3)
    assert torch.equal(out.codes, codes[torch.arange(4) * 4 + best])
    # keeping the n best of N candidates: the best cosines, best first
    kept = pipe.generate(PROMPT, 3, candidates=16, rerank_by="contrastive", seed=3)
    flat = _cosines(pipe, ids, codes)
    assert torch.allclose(kept.scores, flat.sort(descending=True).values[:3], atol=1e-6)
    assert torch.equal(kept.codes, codes[flat.argsort(descending=True)[:3]])


def test_caption_reranking_is_the_self_reranking_of_before(pipe):
    ids = pipe.encode_prompt(PROMPT)
    codes = _candidates(pipe, ids, 12, seed=5)
    scores = prompt_scores(pipe.model, pipe.tokenizer, codes, [ids] * 12).view(3, 4)
    expected = codes[torch.arange(3) * 4 + scores.argmax(1)]
    for by in (None, "caption"):  # the model's default is caption
        out = pipe.generate(PROMPT, 3, rerank=4, rerank_by=by, seed=5)
        assert torch.equal(out.codes, expected)


def test_both_sums_the_two_scores_standardised_over_each_prompts_candidates(pipe):
    ids = pipe.encode_prompt(PROMPT)
    codes = _candidates(pipe, ids, 12, seed=7)
    caption = prompt_scores(pipe.model, pipe.tokenizer, codes, [ids] * 12).view(3, 4)
    cos = _cosines(pipe, ids, codes).view(3, 4)
    combined = _z(caption) + _z(cos)
    best, scores = best_candidates(pipe.model, pipe.tokenizer, codes, [ids] * 12, 4, by="both")
    assert torch.allclose(scores.double(), combined, atol=1e-4)
    assert torch.equal(best[:, 0], combined.argmax(1))
    out = pipe.generate(PROMPT, 3, rerank=4, rerank_by="both", seed=7)
    assert torch.equal(out.codes, codes[torch.arange(3) * 4 + combined.argmax(1)])


def test_standardised_ignores_each_scores_offset_and_unit():
    x = torch.tensor([[-2.0, -1.5, -3.0, -1.0], [0.2, 0.2, 0.2, 0.2]])
    z = standardised(x)
    assert torch.allclose(z[0].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(z[0].std(unbiased=False), torch.tensor(1.0), atol=1e-6)
    assert torch.equal(z[1], torch.zeros(4))  # candidates the score cannot tell apart
    assert torch.allclose(standardised(7 * x - 3), z, atol=1e-5)
    assert torch.equal(z[0].argsort(), x[0].argsort())


def test_contrastive_with_a_region_scores_the_better_view(pipe):
    ids = pipe.encode_prompt(PROMPT)
    codes = _candidates(pipe, ids, 6, seed=2)
    cells = torch.zeros(8, 8, dtype=torch.bool)
    cells[:3, :3] = True
    view = RegionView(cells, torch.zeros(8, 8, dtype=torch.long))
    _, scores = best_candidates(pipe.model, pipe.tokenizer, codes, [ids] * 6, 6,
                                region=view, by="contrastive")
    whole, alone = _cosines(pipe, ids, codes), _cosines(pipe, ids, view.apply(codes))
    assert torch.allclose(scores[0], torch.maximum(whole, alone), atol=1e-6)


def test_contrastive_reads_the_prompt_as_a_text_encoder_model_does(pipe):
    """A model with a text encoder is drawn from, and embeds its prompt by, the encoder's
    states (`CogView.conditions`), not the text ids."""

    class Encoder:  # a stand-in: fixed states per prompt
        def encode(self, prompts):
            g = torch.Generator().manual_seed(len(prompts[0]))
            return [torch.randn(len(p.split()), 8, generator=g) for p in prompts]

    torch.manual_seed(4)
    model = CogLM(coglm_config("tiny", pipe.tokenizer.vocab_size, dim=32, n_layers=1,
                               max_seq_len=128, contrastive_dim=16, text_dim=8)).eval()
    p = pipe.pipeline
    encoded = CogView(Pipeline(model, p.tokenizer, p.vqvae, p.image_size, p.grid, p.meta,
                               text_encoder=Encoder()))
    cond = EncodedText(PROMPT, Encoder().encode([PROMPT])[0])
    codes = generate_images(model, p.tokenizer, [cond] * 8, p.grid, SamplingConfig(),
                            torch.Generator().manual_seed(1))
    text = embed_texts(model, p.tokenizer, [cond])[0]
    cos = (embed_images(model, p.tokenizer, codes) @ text).view(2, 4)
    out = encoded.generate(PROMPT, 2, rerank=4, rerank_by="contrastive", seed=1)
    assert torch.equal(out.codes, codes[torch.arange(2) * 4 + cos.argmax(1)])
    by_ids = embed_texts(model, p.tokenizer, [encoded.encode_prompt(PROMPT)])[0]
    assert not torch.allclose(text, by_ids)  # the ids would have scored something else


def test_a_model_without_a_head_refuses_contrastive_reranking(folders):
    plain = CogView.from_pretrained(folders["plain"])
    for by in ("contrastive", "both"):
        with pytest.raises(SamplingError, match="contrastive head"):
            plain.generate(PROMPT, 1, rerank=2, rerank_by=by)
    with pytest.raises(SamplingError, match="rerank_by|by must be"):
        plain.generate(PROMPT, 1, rerank=2, rerank_by="clip")


# ---------------------------------------------------------------------------------------------
# further rounds where reranking is unsure (`rerank_floor`, `rerank_max`)

TWO = ["a red circle above a blue square", PROMPT]


def _picks_scores(pipe, picks, prompts):
    ids = [pipe.encode_prompt(p) for p in prompts]
    return prompt_scores(pipe.model, pipe.tokenizer, picks, ids).tolist()


def test_unsure_groups_draw_more_and_pick_from_all_their_candidates(pipe):
    """A floor no pick reaches: every group draws two more rounds in the generator's stream,
    each round one batch for all groups, and keeps the best of its 3 x 4 candidates."""
    drawn = pipe.candidates(TWO, 8, seed=3)  # 2 prompts x 2 groups of 4
    picks = pipe.best_of(drawn, 4, "both", rerank_floor=float("inf"), rerank_max=12)
    g = torch.Generator().manual_seed(3)
    conds = [drawn.conditions[0]] * 8 + [drawn.conditions[8]] * 8
    first = generate_images(pipe.model, pipe.tokenizer, conds, pipe.grid,
                            pipe.sampling_config(), g)
    rounds = [generate_images(pipe.model, pipe.tokenizer, conds, pipe.grid,
                              pipe.sampling_config(), g) for _ in range(2)]
    assert torch.equal(first, drawn.codes)
    groups = [torch.cat([c[i * 4:(i + 1) * 4] for c in (first, *rounds)]) for i in range(4)]
    ids = [drawn.ids[0]] * 24 + [drawn.ids[8]] * 24
    best, _ = best_candidates(pipe.model, pipe.tokenizer, torch.cat(groups), ids, 12,
                              by="both", conditions=[c for c in conds for _ in range(3)])
    kept = [grp[b] for grp, b in zip(groups, best[:, 0], strict=True)]
    assert torch.equal(picks, torch.stack(kept))


def test_only_groups_whose_pick_scores_below_the_floor_draw_more(pipe):
    drawn = pipe.candidates(TWO, 8, seed=4)
    one_round = pipe.best_of(drawn, 4, "caption", rerank_max=4)
    scores = _picks_scores(pipe, one_round, [TWO[0]] * 2 + [TWO[1]] * 2)
    floor = sorted(scores)[2]  # two groups below it, two not
    picks = pipe.best_of(drawn, 4, "caption", rerank_floor=floor, rerank_max=8)
    unsure = {i for i, s in enumerate(scores) if s < floor}
    assert len(unsure) == 2 and {i for _, i in drawn.more} == unsure
    for i in range(4):  # a sure group keeps its pick; an unsure one picks among 8
        assert torch.equal(picks[i], one_round[i]) or i in unsure
    # the floor reached, or the most candidates: one round, as without a floor
    for kwargs in ({"rerank_floor": -float("inf")}, {"rerank_floor": 0.0, "rerank_max": 4}):
        fresh = pipe.candidates(TWO, 8, seed=4)
        assert torch.equal(pipe.best_of(fresh, 4, "caption", **kwargs), one_round)
        assert not fresh.more
    empty = pipe.candidates(["", PROMPT], 4, seed=4)  # unconditional: nothing to be unsure of
    pipe.best_of(empty, 4, "caption", rerank_floor=float("inf"), rerank_max=8)
    assert list(empty.more) == [(4, 1)]


def test_every_reranker_takes_its_further_rounds_from_the_same_draws(pipe):
    drawn = pipe.candidates(TWO, 8, seed=5)
    pipe.best_of(drawn, 4, "caption", rerank_floor=float("inf"), rerank_max=8)
    kept = {k: [t.clone() for t in v] for k, v in drawn.more.items()}
    state = drawn.generator.get_state()
    pipe.best_of(drawn, 4, "contrastive", rerank_floor=float("inf"), rerank_max=8)
    assert torch.equal(drawn.generator.get_state(), state)  # nothing drawn again
    assert all(torch.equal(a, b) for k, v in kept.items()
               for a, b in zip(v, drawn.more[k], strict=True))


def test_generate_takes_further_rounds_from_the_models_sampling_json(folders, tmp_path,
                                                                      capsys):
    tuned = tmp_path / "tuned"
    rc, _, err = run(capsys, f"export {folders['head']} {tuned} --rerank 4 --rerank-by both "
                             "--rerank-floor 0 --rerank-max 12")
    assert rc == 0, err
    pipe = CogView.from_pretrained(tuned)
    assert pipe.rerank_rounds(4) == (0.0, 12)
    assert pipe.rerank_rounds(16) == (0.0, 16)  # more per round than the model's most: one
    drawn = pipe.candidates([PROMPT], 8, seed=6)
    expected = pipe.best_of(drawn, 4, "both", rerank_floor=0.0, rerank_max=12)
    assert torch.equal(pipe.generate(PROMPT, 2, seed=6).codes, expected)
    one = pipe.generate(PROMPT, 2, seed=6, rerank_max=4).codes
    assert torch.equal(one, pipe.best_of(pipe.candidates([PROMPT], 8, seed=6), 4, "both",
                                         rerank_max=4))
    rc, _, err = run(capsys, f"generate '{PROMPT}' -n 1 --model {tuned} -o {tmp_path}/a")
    assert rc == 0 and "best of 4, up to 12 where its best caption score is below 0" in err, err
    # the totals of the progress bar grew with the rounds: 3 x 4 candidates drawn
    assert "12/12" in err


@pytest.mark.parametrize("flags, message", [
    ("--rerank-max 2", "--rerank-max must be at least rerank (4), got 2"),
    ("--rerank 4 --rerank-floor -1", "--rerank-floor applies to the model's own reranking"),
])
def test_cli_refuses_bad_further_rounds_before_any_work(folders, tmp_path, capsys, flags,
                                                       message):
    tuned = tmp_path / "tuned"
    assert run(capsys, f"export {folders['head']} {tuned} --rerank 4")[0] == 0
    rc, _, err = run(capsys, f"generate '{PROMPT}' -n 1 --model {tuned} {flags} "
                             f"-o {tmp_path}/a")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("values, field", [
    ({"rerank": 4, "rerank_max": 3}, "rerank_max"),
    ({"rerank": 4, "rerank_floor": "low"}, "rerank_floor"),
    ({"rerank": 4, "rerank_max": 8.5}, "rerank_max"),
])
def test_a_sampling_json_with_bad_further_rounds_is_refused(folders, tmp_path, capsys,
                                                            values, field):
    import shutil

    tuned = tmp_path / "tuned"
    shutil.copytree(folders["head"], tuned)
    (tuned / "sampling.json").write_text(json.dumps(values))
    rc, _, err = run(capsys, f"generate '{PROMPT}' -n 1 --model {tuned} -o {tmp_path}/a")
    assert rc == 2 and "sampling.json" in err and field in err, err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# the command line


def run(capsys, line: str) -> tuple[int, str, str]:
    rc = main(shlex.split(line))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_reranks_by_the_flag_and_by_the_models_default(folders, tmp_path, capsys):
    head = folders["head"]
    rc, _, err = run(capsys, f"generate '{PROMPT}' -n 2 --rerank 4 --rerank-by contrastive "
                             f"--model {head} -o {tmp_path}/a")
    assert rc == 0 and "kept 2 of 4 by the contrastive cosine" in err, err
    tuned = tmp_path / "tuned"
    rc, _, err = run(capsys, f"export {head} {tuned} --rerank 3 --rerank-by both")
    assert rc == 0, err
    assert json.loads((tuned / "sampling.json").read_text()) == {"rerank": 3,
                                                                 "rerank_by": "both"}
    pipe = CogView.from_pretrained(tuned)
    assert pipe.rerank_by_default == "both"
    rc, _, err = run(capsys, f"generate '{PROMPT}' -n 1 --seed 2 --model {tuned} -o "
                             f"{tmp_path}/b")
    assert rc == 0 and "best of 3 by standardised" in err, err
    assert torch.equal(pipe.generate(PROMPT, 1, seed=2).codes,
                       pipe.generate(PROMPT, 1, rerank=3, rerank_by="both", seed=2).codes)


def test_inpainting_reranks_by_its_own_default(folders, tmp_path, capsys):
    from PIL import Image

    tuned = tmp_path / "tuned"
    rc, _, err = run(capsys, f"export {folders['head']} {tuned} --rerank 2 --inpaint-rerank 3 "
                             "--inpaint-rerank-by both")
    assert rc == 0, err
    assert json.loads((tuned / "sampling.json").read_text()) == {
        "rerank": 2, "inpaint": {"rerank": 3, "rerank_by": "both"}}
    pipe = CogView.from_pretrained(tuned)
    assert (pipe.rerank_by_default, pipe.inpaint_rerank_by_default) == ("caption", "both")
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True

    def inpainted(seed=3, **kw):
        return pipe.inpaint(image, mask, PROMPT, 2, seed=seed, **kw).codes

    assert torch.equal(inpainted(), inpainted(rerank_by="both"))
    # the two scores pick differently somewhere: the default is not the caption score
    assert any(not torch.equal(inpainted(seed), inpainted(seed, rerank_by="caption"))
               for seed in range(6))
    assert torch.equal(pipe.generate(PROMPT, 1, seed=3).codes,
                       pipe.generate(PROMPT, 1, seed=3, rerank_by="caption").codes)
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    rc, _, err = run(capsys, f"inpaint --image {tmp_path}/in.png --mask {tmp_path}/m.png "
                             f"--prompt '{PROMPT}' -n 1 --seed 3 --model {tuned} -o {tmp_path}/o")
    assert rc == 0 and "best of 3 by standardised" in err, err
    # eval's inpainting and edits too, unless --rerank-by names a reranker
    from cogview.bench.evaluate import EvalConfig

    for flags, want in (("", "both"), ("--rerank-by caption", "caption")):
        rc, _, err = run(capsys, f"eval --model {tuned} --n-prompts 0 --n-paraphrase 0 "
                                 f"--n-retrieval 0 --n-loss 0 {flags} --json {tmp_path}/e.json")
        assert rc == 0, err
        config = json.loads((tmp_path / "e.json").read_text())["eval_config"]
        config["rerank_by"] = tuple(config["rerank_by"])
        assert EvalConfig(**config).inpaint_reranker == want
    # a model without a head cannot store it
    rc, _, err = run(capsys, f"export {folders['plain']} {tmp_path}/x --inpaint-rerank-by both")
    assert rc == 2 and "--inpaint-rerank-by" in err and "contrastive head" in err


@pytest.mark.parametrize("line", [
    "generate 'a red circle' --rerank 2 -n 1 --rerank-by contrastive -o {t}/o",
    "inpaint --image {t}/in.png --mask {t}/m.png --prompt 'a red circle' --rerank-by both "
    "-o {t}/o",
    "eval --n-prompts 1 --n-paraphrase 0 --n-retrieval 0 --rerank 2 "
    "--rerank-by caption,contrastive",
    "export {plain} {t}/x --rerank-by contrastive",
])
def test_cli_refuses_contrastive_reranking_without_a_head(folders, tmp_path, capsys, line):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "m.png")
    line = line.format(t=tmp_path, plain=folders["plain"])
    if not line.startswith("export"):
        line += f" --model {folders['plain']}"
    rc, _, err = run(capsys, line)
    err = err.strip()
    assert rc == 2 and "--rerank-by" in err and "contrastive head" in err and "\n" not in err


def test_a_sampling_json_that_reranks_by_a_missing_head_is_refused(folders, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folders["plain"], bad)
    (bad / "sampling.json").write_text('{"rerank": 2, "rerank_by": "contrastive"}')
    rc, _, err = run(capsys, f"generate x --model {bad} -o {tmp_path}/o")
    assert rc == 2 and "sampling.json" in err and "contrastive head" in err
    (bad / "sampling.json").write_text('{"rerank_by": "clip"}')
    rc, _, err = run(capsys, f"generate x --model {bad} -o {tmp_path}/o")
    assert rc == 2 and "rerank_by" in err
    (bad / "sampling.json").write_text('{"inpaint": {"rerank_by": "both"}}')
    rc, _, err = run(capsys, f"generate x --model {bad} -o {tmp_path}/o")
    assert rc == 2 and "sampling.json" in err and "inpaint_rerank_by" in err


# ---------------------------------------------------------------------------------------------
# the evaluation


def test_recall_is_perfect_for_perfect_embeddings_and_counts_equal_captions():
    from cogview.bench.evaluate import caption_retrieval

    captions = ["a red circle", "a blue square", "a red circle", "a green triangle"]
    # one direction per distinct caption: the scenes of equal captions embed alike
    basis = torch.eye(3)
    perfect = basis[torch.tensor([0, 1, 0, 2])]
    r = caption_retrieval(perfect, perfect, captions)
    assert r["text_to_image"] == r["image_to_text"] == {"r@1": 1.0, "r@5": 1.0}
    assert r["distinct_captions"] == 3 and r["relevant_per_query"] == pytest.approx(1.5)
    # every caption closest to another scene's image: nothing found at 1, all at 5
    wrong = basis[torch.tensor([1, 2, 1, 0])]
    r = caption_retrieval(perfect, wrong, captions)
    assert r["text_to_image"]["r@1"] == 0.0 and r["text_to_image"]["r@5"] == 1.0


def test_scene_descriptions_fit_their_own_scene_in_both_wordings():
    from cogview.bench.evaluate import _fits, drawn_scenes, scene_description

    held = drawn_scenes(12, 32, seed=0)
    assert held.images.shape == (12, 3, 32, 32) and held.images.dtype == torch.uint8
    assert held.captions == drawn_scenes(12, 32, seed=0).captions
    assert held.captions != drawn_scenes(12, 32, seed=1).captions
    for i, attrs in enumerate(held.attributes):
        described = scene_description(attrs, i)
        assert _fits(described, attrs)
        canonical = shapes.canonical_caption(described)
        assert shapes.compare(shapes.parse_caption(canonical), attrs)["all"], canonical
        paraphrased = shapes.paraphrase(described, i)  # worded as no training caption is
        assert all(o[k] in paraphrased for o in attrs["objects"] for k in shapes.ATTRIBUTES
                   if k != "position")
    # another scene fits only when it has the same objects
    one = {"objects": [dict(held.attributes[0]["objects"][0], colour="red", shape="circle",
                            size="small")], "relation": None}
    other = {"objects": [dict(one["objects"][0], colour="blue")], "relation": None}
    assert _fits(scene_description(one, 0), one) and not _fits(scene_description(one, 0), other)


def test_eval_reports_each_reranker_on_the_same_candidates_and_retrieval(folders, tmp_path,
                                                                          capsys):
    base = (f"eval --model {folders['head']} --n-prompts 2 --n-paraphrase 0 --n-captions 0 "
            "--n-inpaint 0 --n-edit 0 --n-loss 0 --rerank 2 --threads 1 --batch-size 8 ")
    rc, out, err = run(capsys, base + f"--rerank-by caption,contrastive,both --n-retrieval 6 "
                                      f"--json {tmp_path}/all.json")
    assert rc == 0, err
    report = json.loads((tmp_path / "all.json").read_text())
    one = report["t2i"]["one_object"]
    assert one["rerank_by"] == "caption" and list(one["rerankers"]) == ["caption", "contrastive",
                                                                         "both"]
    assert one["accuracy"] == one["rerankers"]["caption"]["accuracy"]
    times = report["seconds_per_image"]["one_object"]
    assert all(t["total"] == pytest.approx(t["sampling"] + t["reranking"], abs=1e-3)
               for t in times.values())
    assert "reranked by contrastive" in out and "s/image" in out
    # the first reranker's pictures are those of a run with that reranker alone
    rc, _, err = run(capsys, base + f"--rerank-by contrastive --n-retrieval 0 "
                                    f"--json {tmp_path}/one.json")
    alone = json.loads((tmp_path / "one.json").read_text())["t2i"]["one_object"]
    assert rc == 0 and alone["accuracy"] == one["rerankers"]["contrastive"]["accuracy"]

    ret = report["retrieval"]
    assert ret["scenes"].startswith("drawn") and ret["captions"]["n"] == 6
    for part in ("captions", "descriptions_canonical", "descriptions_paraphrased"):
        for recalls in (v for k, v in ret[part].items() if k.endswith("_to_image") or
                        k.endswith("_to_text")):
            assert set(recalls) == {"r@1", "r@5"} and 0 <= recalls["r@1"] <= recalls["r@5"] <= 1
    assert "caption->image R@1" in out and "paraphrased->image R@5" in out


def test_eval_skips_retrieval_for_a_model_without_a_head(folders, capsys):
    rc, out, _ = run(capsys, f"eval --model {folders['plain']} --n-prompts 0 --n-paraphrase 0 "
                             "--n-retrieval 4 --threads 1")
    assert rc == 0
    lines = [line.split() for line in out.splitlines() if line.startswith("retrieval")]
    assert len(lines) == 1 and lines[0][:2] == ["retrieval", "skipped"]
    assert "no contrastive head" in " ".join(lines[0])


def test_fashion_retrieval_counts_any_image_of_the_class(pipe, folders, monkeypatch):
    from cogview.bench import evaluate

    labels = torch.tensor([3, 0, 1, 3, 2, 9, 5, 4, 6, 7, 8, 0])
    prompts = [f"class {c}" for c in range(10)]
    images = torch.zeros(len(labels), 3, 32, 32, dtype=torch.uint8)
    fashion = evaluate.FashionEval(pipe, None, prompts, prompts, images, labels)
    real = evaluate.eval_fashion_retrieval(fashion, 12)  # the head's own embeddings
    assert real["n_images"] == 12 and real["n_classes"] == 10
    assert 0 <= real["zero_shot_accuracy"]["r@1"] <= real["zero_shot_accuracy"]["r@5"] <= 1
    # perfect embeddings: each image on its class prompt's direction
    monkeypatch.setattr(pipe, "embed_texts", lambda texts: torch.eye(10))
    monkeypatch.setattr(evaluate, "_image_embeddings", lambda p, x: torch.eye(10)[labels[:len(x)]])
    perfect = evaluate.eval_fashion_retrieval(fashion, 12)
    assert perfect["text_to_image"] == perfect["zero_shot_accuracy"] == {"r@1": 1.0, "r@5": 1.0}
    # every image on the next class's direction: right at 5 only for image -> text
    monkeypatch.setattr(evaluate, "_image_embeddings",
                        lambda p, x: torch.eye(10)[(labels[:len(x)] + 1) % 10] +
                        0.5 * torch.eye(10)[labels[:len(x)]])
    shifted = evaluate.eval_fashion_retrieval(fashion, 12)
    assert shifted["zero_shot_accuracy"] == {"r@1": 0.0, "r@5": 1.0}
    plain = CogView.from_pretrained(folders["plain"])
    skipped = evaluate.eval_fashion_retrieval(evaluate.FashionEval(plain, None, prompts, prompts,
                                                                   images, labels), 12)
    assert "no contrastive head" in skipped["skipped"]


# ---------------------------------------------------------------------------------------------
# the web page


def test_the_web_page_reranks_by_the_chosen_scorer(folders, monkeypatch):
    gr = pytest.importorskip("gradio")
    from cogview.web.page import Page

    head, plain = (Page(CogView.from_pretrained(folders[n])) for n in ("head", "plain"))
    assert head.rerankers == ("caption", "contrastive", "both")
    assert plain.rerankers == ("caption",)  # the page shows no choice
    generate, asked = head.pipe.generate, []

    def recorded(*args, **kwargs):
        asked.append(kwargs["rerank_by"])
        return generate(*args, **kwargs)

    monkeypatch.setattr(head.pipe, "generate", recorded)
    for by, said in (("contrastive", "contrastive reranking"), ("both", "self- and contrastive"),
                     (None, "self-reranking")):
        images, status = head.generate(PROMPT, 2, 5, 1.0, 4, False, by)
        assert len(images) == 2 and f"best of 4 by {said}" in status
    assert asked == ["contrastive", "both", "caption"]  # None: the model's default
    with pytest.raises(gr.Error, match="no contrastive head"):
        plain.generate(PROMPT, 1, 0, 1.0, 4, False, "contrastive")
