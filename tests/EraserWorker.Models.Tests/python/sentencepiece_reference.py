#!/usr/bin/env python3
"""SentencePiece reference for ModelTokenizer (Debian's python3-sentencepiece).

Trains a tiny LLaMA-style SentencePiece model on CORPUS — the trainer and normalizer settings of LLaMA 1/2's
tokenizer.model: BPE, byte fallback, digits split, identity normalization, a dummy prefix, extra whitespace kept,
unk=0 bos=1 eos=2 — writes it as MODEL_DIR/tokenizer.model and prints JSON: the vocabulary size, the special ids,
every piece, for each string of STRINGS_JSON (a JSON array of strings) its ids (`encode`, no BOS/EOS), its
pieces and the decoding of those ids, and the decodings of a few id lists that encode does not produce.

usage: sentencepiece_reference.py MODEL_DIR CORPUS VOCAB_SIZE STRINGS_JSON
"""
import io, json, os, sys
import sentencepiece as spm


def main():
    model_dir, corpus, vocab_size, strings_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        split_by_number=True,
        allow_whitespace_only_pieces=True,
        treat_whitespace_as_suffix=False,
        max_sentencepiece_length=16,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_surface=" \u2047 ",
        num_threads=1,
        minloglevel=2,
    )
    data = model.getvalue()
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "tokenizer.model"), "wb") as f:
        f.write(data)

    sp = spm.SentencePieceProcessor(model_proto=data)
    with open(strings_file, encoding="utf-8") as f:
        strings = json.load(f)
    encodings = []
    for s in strings:
        ids = sp.encode(s)
        encodings.append({"text": s, "ids": ids, "pieces": [sp.id_to_piece(i) for i in ids], "decoded": sp.decode(ids)})
    # Decodings of id lists that encode does not produce (bytes or <unk> before a piece that starts with a space).
    decodes = []
    for pieces in (["<0x41>", "\u2581t"], ["<0xC3>", "<0xA9>", "\u2581t"], ["<unk>", "\u2581t"], ["<s>", "\u2581t", "</s>"],
                   ["\u2581t", "<s>", "\u2581t"], ["<0xC3>"], ["\u2581", "\u2581"]):
        ids = [sp.piece_to_id(p) for p in pieces]
        decodes.append({"pieces": pieces, "ids": ids, "decoded": sp.decode(ids)})
    json.dump({
        "vocabSize": sp.get_piece_size(),
        "unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(),
        "pieces": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
        "encodings": encodings,
        "decodes": decodes,
    }, sys.stdout)


if __name__ == "__main__":
    main()
