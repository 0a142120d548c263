using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Models.Tests.TestSupport;
using Microsoft.ML.Tokenizers;
using Xunit.Abstractions;

namespace EraserWorker.Models.Tests;

/// <summary>
/// ModelTokenizer on a <c>tokenizer.model</c> against the SentencePiece library itself (Debian's python3-sentencepiece,
/// python/sentencepiece_reference.py): a tiny LLaMA-style model (BPE, byte fallback, split digits, identity
/// normalization, dummy prefix, extra whitespace kept, unk 0 / bos 1 / eos 2) is trained on the start of the GPL-3
/// text and every test string must encode to SentencePiece's ids, decode as SentencePiece decodes (to the text), and
/// make LLaMA samples.
/// </summary>
public sealed class SentencePieceTokenizerTests(SentencePieceTokenizerTests.Reference reference, ITestOutputHelper output)
    : IClassFixture<SentencePieceTokenizerTests.Reference>
{
    private const string Corpus = "/usr/share/common-licenses/GPL-3";
    private const int TrainingLines = 240;
    private const int VocabSize = 400;

    private static readonly string[] Crafted =
    [
        "The quick brown fox jumps over the lazy dog.",
        "Hello, world!",
        " leading space",
        "  two leading spaces",
        "trailing space ",
        "trailing spaces   ",
        "multiple   spaces    between     words",
        "    four spaces before a word",
        "     five",
        "        eight-space indent();",
        "\tTab\tseparated\tvalues",
        "line one\nline two\n\n  indented after a blank line\r\nCRLF line",
        "digits 0123456789 and 3.14159, 1,000,000; June 29, 2007",
        "Punctuation: (a) [b] {c} <d> \"quoted\" 'single' -- dash... !? #$%&*+/=@\\^_`|~",
        "café naïve résumé Ærøskøbing façade",
        "ü✓漢",
        "日本語のテキスト",
        "emoji 🙂👍🏽 mixed",
        "Ελληνικά и кириллица",
        "aaaa bbbbbb eeee ssss tttt",
        "......  ----  ====",
        "",
        " ",
        "  ",
        "\n",
        "x",
        "\u2581 a literal lower one eighth block\u2581\u2581",
        "<s> </s> <unk> <0x41> literal special pieces",
        "non\u00a0breaking\u00a0space and zero\u200bwidth",
        Prompt,
        Response,
    ];

    private const string Prompt = "Question: what does the GPL protect?";
    private const string Response = " The freedom to share and change all versions of a program.";

    /// <summary>The trained model folder and SentencePiece's answers, made once for the class.</summary>
    public sealed class Reference : IDisposable
    {
        private readonly TempFolder _temp = new();

        public Reference()
        {
            Assert.True(File.Exists(Corpus), $"{Corpus} (Debian's base-files) is the training text of this test");
            var lines = File.ReadAllLines(Corpus);
            string corpus = _temp.Sub("corpus.txt");
            File.WriteAllLines(corpus, lines.Take(TrainingLines));
            // Test strings: the crafted ones, then the paragraphs of the rest of the GPL (indentation, double spaces).
            var paragraphs = string.Join("\n", lines.Skip(TrainingLines)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
            Strings = [.. Crafted, .. paragraphs];
            string strings = _temp.Sub("strings.json");
            File.WriteAllText(strings, JsonSerializer.Serialize(Strings), new UTF8Encoding(false));

            ModelDirectory = _temp.Sub("model");
            string output = PythonReference.RunScript("sentencepiece_reference.py", PythonReference.SentencePiecePackages, TimeSpan.FromSeconds(120),
                ModelDirectory, corpus, VocabSize.ToString(System.Globalization.CultureInfo.InvariantCulture), strings);
            Json = JsonNode.Parse(output)!.AsObject();
            Assert.Equal(VocabSize, Json["vocabSize"]!.GetValue<int>());
            Assert.Equal([0, 1, 2], new[] { Json["unk"]!.GetValue<int>(), Json["bos"]!.GetValue<int>(), Json["eos"]!.GetValue<int>() });
            RandomLlama.WriteModel(ModelDirectory, RandomLlama.Tiny(vocab: VocabSize), seed: 5);
        }

        public string[] Strings { get; }

        public string ModelDirectory { get; }

        public JsonObject Json { get; }

        public IEnumerable<(string Text, int[] Ids, string[] Pieces, string Decoded)> Encodings =>
            Json["encodings"]!.AsArray().Select(e => (
                e!["text"]!.GetValue<string>(),
                e["ids"]!.AsArray().Select(i => i!.GetValue<int>()).ToArray(),
                e["pieces"]!.AsArray().Select(p => p!.GetValue<string>()).ToArray(),
                e["decoded"]!.GetValue<string>()));

        public int[] SentencePieceIds(string text) => Encodings.First(e => e.Text == text).Ids;

        public void Dispose() => _temp.Dispose();
    }

    private ModelTokenizer Load()
    {
        var config = LlamaConfig.Load(reference.ModelDirectory);
        var tokenizer = ModelTokenizer.TryLoad(reference.ModelDirectory, config);
        Assert.NotNull(tokenizer);
        Assert.Equal(Path.Combine(reference.ModelDirectory, "tokenizer.model"), tokenizer.Source);
        return tokenizer;
    }

    [Fact]
    public void Encode_gives_SentencePieces_ids_and_decode_gives_the_text_back()
    {
        var tokenizer = Load();
        var encodings = reference.Encodings.ToList();
        Assert.Equal(reference.Strings.Length, encodings.Count);
        Assert.Contains(encodings, e => e.Pieces.Any(p => p.StartsWith("<0x", StringComparison.Ordinal))); // byte fallback is exercised
        Assert.Contains(encodings, e => e.Pieces.Any(p => p.Length > 1 && p.All(c => c == '\u2581'))); // whitespace-only pieces too
        var failures = new List<string>();
        foreach (var (text, ids, pieces, decoded) in encodings)
        {
            // Identity normalization: SentencePiece gives every test string back, but for a literal ▁ (its space).
            Assert.Equal(text.Replace('\u2581', ' '), decoded);
            var ours = tokenizer.Encode(text);
            if (!ours.SequenceEqual(ids))
                failures.Add($"{JsonSerializer.Serialize(text)}: SentencePiece [{string.Join(",", ids)}] ({string.Join(" ", pieces)}), ModelTokenizer [{string.Join(",", ours)}]");
            else if (tokenizer.Decode(ours) != decoded)
                failures.Add($"{JsonSerializer.Serialize(text)}: decodes to {JsonSerializer.Serialize(tokenizer.Decode(ours))}, SentencePiece to {JsonSerializer.Serialize(decoded)}");
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of {encodings.Count} strings differ from SentencePiece:\n{string.Join("\n", failures)}");
        Assert.Empty(tokenizer.Encode(""));
    }

    [Fact]
    public void Samples_are_bos_prompt_and_response_eos()
    {
        var tokenizer = Load();
        Assert.Equal(1, tokenizer.BosId);
        Assert.Equal(2, tokenizer.EosId);
        string prompt = Prompt, response = Response;
        var (p, r) = tokenizer.EncodeSample(prompt, response);
        Assert.Equal([1, .. tokenizer.Encode(prompt)], p);
        Assert.Equal([.. tokenizer.Encode(response), 2], r);
        var sample = TrainingData.ParseLine(JsonSerializer.Serialize(new { id = "g1", prompt, response }), "l:1", VocabSize, tokenizer);
        Assert.Equal(p, sample.PromptIds);
        Assert.Equal(r, sample.ResponseIds);
        Assert.Equal([1, .. reference.SentencePieceIds(prompt)], p);
        Assert.Equal([.. reference.SentencePieceIds(response), 2], r);
        Assert.Equal(prompt, tokenizer.Decode(p)); // BOS/EOS decode to nothing
        Assert.Equal(response, tokenizer.Decode(r)); // only the dummy prefix goes, not the response's own leading space
    }

    /// <summary>Decoding is Microsoft.ML.Tokenizers': the same as SentencePiece on what Encode makes (above) and on
    /// BOS/EOS, but an id list that starts with byte pieces keeps no space before the first ▁ piece, and &lt;unk&gt;
    /// decodes to nothing (SentencePiece: " ⁇ "). Encode never makes either (its first piece always starts with the
    /// dummy prefix ▁, and byte fallback leaves no &lt;unk&gt;) — only slices or hand-made id lists can.</summary>
    [Fact]
    public void Decode_of_id_lists_encode_does_not_make()
    {
        var tokenizer = Load();
        var cases = reference.Json["decodes"]!.AsArray().ToDictionary(
            c => string.Join(" ", c!["pieces"]!.AsArray().Select(p => p!.GetValue<string>())),
            c => (Ids: c!["ids"]!.AsArray().Select(i => i!.GetValue<int>()).ToArray(), Decoded: c["decoded"]!.GetValue<string>()));
        var differ = new Dictionary<string, (string SentencePiece, string Ours)>
        {
            ["<0x41> \u2581t"] = ("A t", "At"),
            ["<0xC3> <0xA9> \u2581t"] = ("\u00e9 t", "\u00e9t"),
            ["<unk> \u2581t"] = (" \u2047  t", "t"),
        };
        foreach (var (pieces, (ids, decoded)) in cases)
        {
            Assert.DoesNotContain(0, ids.Skip(pieces.StartsWith("<unk>", StringComparison.Ordinal) ? 1 : 0)); // every piece exists
            if (differ.TryGetValue(pieces, out var expected))
            {
                Assert.Equal(expected.SentencePiece, decoded);
                Assert.Equal(expected.Ours, tokenizer.Decode(ids));
            }
            else
            {
                Assert.Equal(decoded, tokenizer.Decode(ids));
            }
        }
        Assert.Equal(7, cases.Count);
    }

    /// <summary>Why ModelTokenizer does not encode with Microsoft.ML.Tokenizers: its SentencePiece BPE merges the
    /// rightmost of equal-score pairs first, SentencePiece the leftmost — so runs of spaces (and any piece formed at
    /// overlapping positions) split differently, and the difference can reach the next word. If this starts failing
    /// after a package upgrade, the library agrees with SentencePiece and <see cref="SentencePieceBpe"/> may go.</summary>
    [Fact]
    public void Microsoft_ML_Tokenizers_alone_breaks_merge_ties_the_other_way()
    {
        using var stream = File.OpenRead(Path.Combine(reference.ModelDirectory, "tokenizer.model"));
        var library = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
        var pieces = reference.Json["pieces"]!.AsArray().Select(p => p!.GetValue<string>()).ToArray();
        string[] Library(string text) => [.. library.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false).Select(i => pieces[i])];

        // "▁▁▁▁▁four" (dummy prefix + 4 spaces): SentencePiece merges the ▁▁ at 0 first, the library the ▁▁ at 3,
        // and from there the merges part ways: ▁▁▁▁ ▁f… against ▁▁▁ ▁▁ f….
        const string text = "    four spaces before a word";
        Assert.Equal(["\u2581\u2581\u2581\u2581", "\u2581f"], reference.Encodings.First(e => e.Text == text).Pieces[..2]);
        Assert.Equal(["\u2581\u2581\u2581", "\u2581\u2581", "f"], Library(text)[..3]);

        var differing = reference.Encodings.Where(e => !Library(e.Text).SequenceEqual(e.Pieces)).ToList();
        output.WriteLine($"Microsoft.ML.Tokenizers differs from SentencePiece on {differing.Count} of {reference.Strings.Length} strings:");
        foreach (var e in differing)
            output.WriteLine($"  {JsonSerializer.Serialize(e.Text[..Math.Min(60, e.Text.Length)])}: {string.Join(" ", e.Pieces)} | {string.Join(" ", Library(e.Text))}");
        Assert.All(differing, e => Assert.Equal(e.Text, library.Decode(library.EncodeToIds(e.Text, false, false)))); // same text either way
        Assert.All(differing, e => Assert.Contains("\u2581\u2581", string.Concat(e.Pieces), StringComparison.Ordinal)); // here: whitespace runs only
    }
}
