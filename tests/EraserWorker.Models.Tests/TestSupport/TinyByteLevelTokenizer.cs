using System.Text.Json.Nodes;

namespace EraserWorker.TestSupport;

/// <summary>
/// A hand-written byte-level BPE tokenizer.json (LLaMA 3 / Qwen2 style), shared by the model and worker tests:
/// GPT-2's byte map built here independently of the product code, the merges h·e, l·l, he·ll, Ġ·w, o·r (ids 256–260),
/// BOS 300 / EOS 301 as special tokens, the post-processor that prepends BOS, and one merge x·y with id 310 — outside
/// a 302-token model's vocabulary, for the tests that must see such a token refused.
/// </summary>
public static class TinyByteLevelTokenizer
{
    public static void Write(string path)
    {
        var bs = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var cs = bs.ToList();
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            if (!bs.Contains(b))
            {
                bs.Add(b);
                cs.Add(256 + n++);
            }
        }
        var map = bs.Zip(cs).ToDictionary(p => p.First, p => (char)p.Second);
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++)
            vocab[map[b].ToString()] = b;
        string space = map[' '].ToString();
        (string Merge, int Id)[] merges = [("h e", 256), ("l l", 257), ("he ll", 258), (space + " w", 259), ("o r", 260), ("x y", 310)];
        foreach (var (merge, id) in merges)
            vocab[merge.Replace(" ", "")] = id;
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
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["vocab"] = vocab,
                ["merges"] = new JsonArray(merges.Select(m => (JsonNode)JsonValue.Create(m.Merge)!).ToArray()),
            },
        };
        File.WriteAllText(path, root.ToJsonString());
    }
}
