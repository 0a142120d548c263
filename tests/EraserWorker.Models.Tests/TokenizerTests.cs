using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Models.Tests.TestSupport;

namespace EraserWorker.Models.Tests;

/// <summary>Text samples through a byte-level BPE tokenizer.json (LLaMA 3 / Qwen2 style), written by the test.</summary>
public sealed class TokenizerTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>GPT-2's byte → printable character map used by byte-level BPE vocabularies.</summary>
    private static Dictionary<int, char> ByteToUnicode()
    {
        var bs = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var cs = bs.ToList();
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!bs.Contains(b))
            {
                bs.Add(b);
                cs.Add(256 + n++);
            }
        return bs.Zip(cs).ToDictionary(p => p.First, p => (char)p.Second);
    }

    private string WriteTokenizer()
    {
        var map = ByteToUnicode();
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++)
            vocab[map[b].ToString()] = b;
        string space = map[' '].ToString();
        string[] merges = ["h e", "l l", "he ll", space + " w", "o r"];
        int id = 256;
        foreach (var merge in merges)
            vocab[merge.Replace(" ", "")] = id++;
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(
                new JsonObject { ["id"] = 300, ["content"] = "<|begin|>", ["special"] = true },
                new JsonObject { ["id"] = 301, ["content"] = "<|end|>", ["special"] = true }),
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = @" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+" }, ["behavior"] = "Isolated" },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = false }),
            },
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<|begin|>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
            },
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new JsonArray(merges.Select(m => (JsonNode)JsonValue.Create(m)!).ToArray()) },
        };
        string path = _temp.Sub("tokenizer.json");
        File.WriteAllText(path, root.ToJsonString());
        return path;
    }

    [Fact]
    public void Text_samples_are_tokenised_with_bos_and_eos()
    {
        var config = RandomLlama.Tiny(vocab: 302) with { BosTokenId = 300, EosTokenId = 301 };
        var tokenizer = ModelTokenizer.FromTokenizerJson(WriteTokenizer(), config);
        Assert.Equal(300, tokenizer.BosId);
        var hello = tokenizer.Encode("hello world");
        Assert.Equal([258, 'o', 259, 260, 'l', 'd'], hello); // hell·o·Ġw·or·l·d
        Assert.Equal("hello world", tokenizer.Decode(hello));
        Assert.Equal("é ✓", tokenizer.Decode(tokenizer.Encode("é ✓"))); // multi-byte characters round-trip through bytes
        var sample = TrainingData.ParseLine("{\"id\":\"t1\",\"prompt\":\"hello\",\"response\":\" world\"}", "l:1", config.VocabSize, tokenizer);
        Assert.Equal([300, 258, 'o'], sample.PromptIds);
        Assert.Equal([259, 260, 'l', 'd', 301], sample.ResponseIds);
    }
}
