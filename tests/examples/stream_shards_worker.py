"""Run by test_distributed.py under `accelerate launch` on several CPU processes: the training dataloader of a
streamed pretraining corpus, built as run_pretrain.py builds it (the same argument parsing, `prepare_split`,
`read_stream_on_every_rank` and `CMTTrainer`), and the transcripts each rank is given, in order, written to
`<output_dir>/rank<N>.json`. The collator only returns the transcripts: what is checked is which rows reach a rank."""

import itertools
import json
from pathlib import Path

import torch

from cmt_training.arguments import CMTPretrainingArguments, DataArguments, parse_args
from cmt_training.data import prepare_split
from cmt_training.distributed import read_stream_on_every_rank
from cmt_training.tasks import load_pretraining_corpus
from cmt_training.trainer import CMTTrainer


def main(rows_per_rank: int = 40):
    data_args, training_args = parse_args((DataArguments, CMTPretrainingArguments))
    prepared = prepare_split(load_pretraining_corpus(data_args), None, data_args.max_audio_seconds)
    prepared = read_stream_on_every_rank(prepared, training_args)
    trainer = CMTTrainer(
        model=torch.nn.Linear(1, 1),
        args=training_args,
        train_dataset=prepared,
        data_collator=lambda rows: {"text": [row["text"] for row in rows]},
    )
    texts = itertools.chain.from_iterable(batch["text"] for batch in trainer.get_train_dataloader())
    output = Path(training_args.output_dir) / f"rank{training_args.process_index}.json"
    output.write_text(json.dumps(list(itertools.islice(texts, rows_per_rank))))


if __name__ == "__main__":
    main()
