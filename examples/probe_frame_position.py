"""Do an audio tower's frame states know where in the utterance they are?

CMT's cross-modal layers let every audio frame attend to the transcript's tokens; to read the word spoken at a frame
(the stressed word of the synthetic corpus' aligned items) a frame has to find that word, by its sound or by its
position. This probe fits a ridge regression from each layer's frame states to the frame's relative position t/T on
some utterances and reports R² on others (1: position fully known, 0: not at all):

    python examples/probe_frame_position.py --audio_model_name_or_path towers/hubert --output probe.json
    python examples/probe_frame_position.py --preset demo --output probe_random.json   # a random tower, for reference
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import Ridge
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

import hub_datasets
from modeling_cmt import SAMPLING_RATE, CMTConfig


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio_model_name_or_path", help="A HubertModel checkpoint (e.g. run_tower_pretrain.py's).")
    source.add_argument("--preset", help="A preset whose audio_config gives a random tower of that shape.")
    parser.add_argument("--synthetic_size", type=int, default=1000, help="Size of the synthetic corpus read.")
    parser.add_argument("--session", type=int, default=2, help="The session whose utterances are probed.")
    parser.add_argument("--num_fit", type=int, default=150, help="Utterances the regression is fitted on.")
    parser.add_argument("--num_score", type=int, default=50, help="Other utterances it is scored on.")
    parser.add_argument("--max_audio_seconds", type=float, default=6.0)
    parser.add_argument("--cache_dir", help="Where the synthetic corpus is cached.")
    parser.add_argument("--output", required=True, help="JSON file for the results (refused if it exists).")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    output = Path(args.output)
    if output.exists():
        raise SystemExit(f"probe_frame_position: error: {output} exists; name another --output.")
    torch.manual_seed(0)
    if args.audio_model_name_or_path:
        model = HubertModel.from_pretrained(args.audio_model_name_or_path)
    else:
        model = HubertModel(HubertConfig(**CMTConfig.from_preset(args.preset).audio_config.to_dict()))
    model.eval()
    corpus = hub_datasets.load_synthetic_emotion(num_utterances=args.synthetic_size, cache_dir=args.cache_dir)
    if f"session{args.session}" not in corpus:
        raise SystemExit(f"probe_frame_position: error: --session {args.session}: the corpus has {sorted(corpus)}.")
    rows = corpus[f"session{args.session}"]
    count = args.num_fit + args.num_score
    if len(rows) < count:
        raise SystemExit(f"probe_frame_position: error: session {args.session} has {len(rows)} utterances, < {count}.")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLING_RATE, do_normalize=True)
    states = []
    for row in rows.select(range(count)).with_format("numpy"):
        waveform = np.asarray(row["audio"]["array"], dtype=np.float32)[: int(args.max_audio_seconds * SAMPLING_RATE)]
        inputs = torch.tensor(extractor(waveform, sampling_rate=SAMPLING_RATE)["input_values"][0])[None]
        with torch.no_grad():
            states.append([layer[0].numpy() for layer in model(inputs, output_hidden_states=True).hidden_states])

    def split(part, layer):
        features = np.concatenate([utterance[layer] for utterance in part])
        positions = np.concatenate([np.linspace(0, 1, len(utterance[layer])) for utterance in part])
        return features, positions

    r2 = []
    for layer in range(len(states[0])):
        regression = Ridge(alpha=1.0).fit(*split(states[: args.num_fit], layer))
        r2.append(float(regression.score(*split(states[args.num_fit :], layer))))
        print(f"layer {layer}: R² of t/T on {args.num_score} held-out utterances = {r2[-1]:.3f}")
    results = {"model": args.audio_model_name_or_path or f"random {args.preset}", "r2_by_layer": r2, **vars(args)}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
