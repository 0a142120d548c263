using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace EraserWorker.Models;

/// <summary>
/// The tokenizer of a model folder: <c>tokenizer.model</c> (SentencePiece, LLaMA 1/2, Mistral) when present, else a
/// byte-level BPE <c>tokenizer.json</c> (LLaMA 3, Qwen2: vocabulary, merges, the pre-tokenizer's split regex and the
/// added special tokens), through Microsoft.ML.Tokenizers. A <c>tokenizer.model</c> is encoded by
/// <see cref="SentencePieceBpe"/> (SentencePiece's own algorithm: Microsoft.ML.Tokenizers 2.0.1 breaks merge ties
/// differently) and decoded by Microsoft.ML.Tokenizers' <c>LlamaTokenizer</c>.
/// A sample is encoded as prompt → [BOS] + tokens(prompt), response → tokens(response) + [EOS] (BOS/EOS when the
/// model has them; the two texts are tokenised separately, as supervised fine-tuning scripts do).
/// </summary>
public sealed class ModelTokenizer
{
    private readonly Tokenizer _tokenizer;
    private readonly SentencePieceBpe? _sentencePiece;

    private ModelTokenizer(Tokenizer tokenizer, SentencePieceBpe? sentencePiece, int? bos, int? eos, string source)
    {
        _tokenizer = tokenizer;
        _sentencePiece = sentencePiece;
        BosId = bos;
        EosId = eos;
        Source = source;
    }

    public int? BosId { get; }

    public int? EosId { get; }

    /// <summary>The file the tokenizer was read from.</summary>
    public string Source { get; }

    /// <summary>The model folder's tokenizer, or null when it has neither tokenizer.model nor tokenizer.json.</summary>
    public static ModelTokenizer? TryLoad(string modelDirectory, LlamaConfig config)
    {
        string sp = Path.Combine(modelDirectory, "tokenizer.model");
        if (File.Exists(sp))
        {
            byte[] model = File.ReadAllBytes(sp);
            LlamaTokenizer t;
            using (var stream = new MemoryStream(model, writable: false))
                t = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
            return new ModelTokenizer(t, SentencePieceBpe.Parse(model, sp), config.BosTokenId ?? t.BeginningOfSentenceId, config.EosTokenId ?? t.EndOfSentenceId, sp);
        }
        string json = Path.Combine(modelDirectory, "tokenizer.json");
        return File.Exists(json) ? FromTokenizerJson(json, config) : null;
    }

    /// <summary>A byte-level BPE tokenizer from a Hugging Face tokenizer.json.</summary>
    public static ModelTokenizer FromTokenizerJson(string path, LlamaConfig config)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message}).", e);
        }
        if (root["model"] is not JsonObject model || model["type"]?.GetValue<string>() != "BPE")
            throw new InvalidDataException($"{path}: only BPE tokenizer.json models are supported (or give tokenizer.model, or token ids).");
        string preTokenizers = root["pre_tokenizer"]?.ToJsonString() ?? "";
        if (!preTokenizers.Contains("\"ByteLevel\"", StringComparison.Ordinal))
            throw new InvalidDataException($"{path}: only byte-level BPE tokenizer.json is supported (LLaMA 1/2-style SentencePiece BPE needs tokenizer.model).");
        if (model["vocab"] is not JsonObject vocab || model["merges"] is not JsonArray merges)
            throw new InvalidDataException($"{path}: the BPE model has no vocab or merges.");

        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        if (root["added_tokens"] is JsonArray added)
            foreach (var token in added.OfType<JsonObject>())
                if (token["special"]?.GetValue<bool>() == true)
                    special[token["content"]!.GetValue<string>()] = token["id"]!.GetValue<int>();

        var options = new BpeOptions(vocab.Select(kv => KeyValuePair.Create(kv.Key, kv.Value!.GetValue<int>())))
        {
            Merges = merges.Select(m => m is JsonArray pair ? pair[0]!.GetValue<string>() + " " + pair[1]!.GetValue<string>() : m!.GetValue<string>()).ToArray(),
            ByteLevel = true,
            SpecialTokens = special.Count > 0 ? special : null,
            PreTokenizer = new RegexPreTokenizer(new Regex(SplitPattern(root) ?? Gpt2Pattern, RegexOptions.Compiled), special.Count > 0 ? special : null),
        };
        var tokenizer = BpeTokenizer.Create(options);
        // BOS is added when the post-processor's template starts with it (LLaMA 3); EOS is appended to responses.
        int? bos = config.BosTokenId is int b && (root["post_processor"]?.ToJsonString() ?? "").Contains($"\"id\":{b}", StringComparison.Ordinal) ? b : null;
        bos ??= PostProcessorBos(root, special);
        return new ModelTokenizer(tokenizer, null, bos, config.EosTokenId, path);
    }

    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static string? SplitPattern(JsonObject root)
    {
        var stack = new Stack<JsonNode?>([root["pre_tokenizer"]]);
        while (stack.Count > 0)
        {
            switch (stack.Pop())
            {
                case JsonObject o when o["type"]?.GetValue<string>() == "Split" && o["pattern"] is JsonObject p && p["Regex"] is JsonValue r:
                    return r.GetValue<string>();
                case JsonObject o when o["pretokenizers"] is JsonArray list:
                    foreach (var item in list.Reverse())
                        stack.Push(item);
                    break;
            }
        }
        return null;
    }

    private static int? PostProcessorBos(JsonObject root, Dictionary<string, int> special)
    {
        var single = root["post_processor"]?["single"] as JsonArray
            ?? (root["post_processor"]?["processors"] as JsonArray)?.Select(p => p?["single"]).OfType<JsonArray>().FirstOrDefault();
        if (single is { Count: > 0 } && single[0]?["SpecialToken"]?["id"]?.GetValue<string>() is string name && special.TryGetValue(name, out int id))
            return id;
        return null;
    }

    /// <summary>Token ids of a text, without special tokens (a SentencePiece model: exactly <c>SentencePieceProcessor.encode</c>).</summary>
    public int[] Encode(string text) => _sentencePiece?.Encode(text) ?? _tokenizer.EncodeToIds(text).ToArray();

    public string Decode(IEnumerable<int> ids) => _tokenizer.Decode(ids);

    /// <summary>(prompt ids, response ids) of a sample: [BOS] + prompt, response + [EOS].</summary>
    public (int[] Prompt, int[] Response) EncodeSample(string prompt, string response)
    {
        var p = Encode(prompt);
        var r = Encode(response);
        if (BosId is int bos)
            p = [bos, .. p];
        if (EosId is int eos)
            r = [.. r, eos];
        return (p, r);
    }
}
