#!/usr/bin/env bash
# One self-rewarding iteration by hand, stage by stage, on the tiny model (CPU, a few minutes).
# Every line is a plain `srlm <stage>` call: copy any of them to run a stage on your own files.
set -euo pipefail
RUN=${RUN_DIR:-runs/walkthrough}
SRLM="${PY:-python} -m srlm.cli"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$RUN" && mkdir -p "$RUN"
step() { echo; echo "== $*"; }

step "M0: build the tiny model locally";              $SRLM tiny-model --out "$RUN/m0"
step "seed data: the bundled IFT + EFT seed set";     $SRLM seed --preset tiny --out "$RUN/seed"
step "seed SFT on IFT + EFT: M0 -> M1";               $SRLM sft --preset tiny --model "$RUN/m0" --ift "$RUN/seed/ift.jsonl" --eft "$RUN/seed/eft_train.jsonl" --out "$RUN/m1"
step "M1 writes new prompts";                         $SRLM prompts --preset tiny --model "$RUN/m1" --out "$RUN/iter2/prompts.jsonl"
step "M1 samples 4 candidates per prompt";            $SRLM sample --preset tiny --model "$RUN/m1" --prompts "$RUN/iter2/prompts.jsonl" --out "$RUN/iter2/candidates.jsonl"
step "M1 judges every candidate 3 times";             $SRLM judge --preset tiny --model "$RUN/m1" --candidates "$RUN/iter2/candidates.jsonl" --out "$RUN/iter2/judgements.jsonl"
step "preference pairs: best vs worst, ties dropped"; $SRLM pairs --judgements "$RUN/iter2/judgements.jsonl" --out "$RUN/iter2/pairs.jsonl"
step "DPO on the pairs: M1 -> M2";                    $SRLM dpo --preset tiny --model "$RUN/m1" --pairs "$RUN/iter2/pairs.jsonl" --out "$RUN/m2"
step "reward-model metrics of M2";                    $SRLM eval-rm --preset tiny --model "$RUN/m2" --eft-eval "$RUN/seed/eft_eval.jsonl" --out "$RUN/eval/m2-rm"
step "head-to-head M2 vs M1 (judge: M1)";             $SRLM winrate --preset tiny --model-a "$RUN/m2" --model-b "$RUN/m1" --judge-model "$RUN/m1" --prompts "$RUN/iter2/prompts.jsonl" --out "$RUN/eval/m2-vs-m1"
echo
echo "Done. Reports: $RUN/eval/*/report.md. A tiny model's numbers say nothing about quality: this run proves the stages and their wiring."
