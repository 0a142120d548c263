using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace EraserWorker.Models;

/// <summary>
/// Learns a small byte-level BPE vocabulary (GPT-2's scheme: bytes mapped to printable characters, GPT-2's split
/// regex, merges of the most frequent adjacent pair) from a text and writes it as a Hugging Face
/// <c>tokenizer.json</c> that <see cref="ModelTokenizer"/> reads. Ids: 0 = &lt;pad&gt;, 1 = &lt;s&gt; (BOS, added by the
/// post-processor), 2 = &lt;/s&gt; (EOS), 3..258 the 256 bytes, then one id per merge. Deterministic: ties between
/// equally frequent pairs go to the ordinally smallest pair.
/// </summary>
public static class ByteLevelBpeTrainer
{
    public const int PadId = 0, BosId = 1, EosId = 2, FirstByteId = 3;

    public const string SplitPattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>Learns <c>vocabSize − 259</c> merges from <paramref name="text"/> and writes <paramref name="path"/>.</summary>
    public static void Train(string text, int vocabSize, string path)
    {
        int merges = vocabSize - FirstByteId - 256;
        ArgumentOutOfRangeException.ThrowIfNegative(merges, nameof(vocabSize));
        var byteChars = ByteToChar();
        // Word frequencies of the pre-tokenised text, each word a list of symbols (initially its byte characters).
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (Match m in Regex.Matches(text, SplitPattern))
        {
            string word = new(Encoding.UTF8.GetBytes(m.Value).Select(b => byteChars[b]).ToArray());
            counts[word] = counts.GetValueOrDefault(word) + 1;
        }
        var words = counts.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => (Symbols: kv.Key.Select(c => c.ToString()).ToList(), Count: kv.Value)).ToList();
        var learned = new List<(string Left, string Right)>();
        for (int k = 0; k < merges; k++)
        {
            var pairs = new Dictionary<(string, string), long>();
            foreach (var (symbols, count) in words)
                for (int i = 0; i + 1 < symbols.Count; i++)
                {
                    var pair = (symbols[i], symbols[i + 1]);
                    pairs[pair] = pairs.GetValueOrDefault(pair) + count;
                }
            if (pairs.Count == 0)
                break;
            var best = pairs.OrderByDescending(kv => kv.Value)
                .ThenBy(kv => kv.Key.Item1, StringComparer.Ordinal).ThenBy(kv => kv.Key.Item2, StringComparer.Ordinal).First().Key;
            learned.Add(best);
            string merged = best.Item1 + best.Item2;
            foreach (var (symbols, _) in words)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (symbols[i] == best.Item1 && symbols[i + 1] == best.Item2)
                    {
                        symbols[i] = merged;
                        symbols.RemoveAt(i + 1);
                    }
        }
        File.WriteAllText(path, TokenizerJson(byteChars, learned));
    }

    private static string TokenizerJson(char[] byteChars, List<(string Left, string Right)> merges)
    {
        var vocab = new JsonObject { ["<pad>"] = PadId, ["<s>"] = BosId, ["</s>"] = EosId };
        for (int b = 0; b < 256; b++)
            vocab[byteChars[b].ToString()] = FirstByteId + b;
        int next = FirstByteId + 256;
        foreach (var (l, r) in merges)
            if (!vocab.ContainsKey(l + r))
                vocab[l + r] = next++;
        JsonObject Special(int id, string content) => new()
        {
            ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
            ["normalized"] = false, ["special"] = true,
        };
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(Special(PadId, "<pad>"), Special(BosId, "<s>"), Special(EosId, "</s>")),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject
                    {
                        ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = SplitPattern },
                        ["behavior"] = "Isolated", ["invert"] = false,
                    },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false }),
            },
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
                ["special_tokens"] = new JsonObject
                {
                    ["<s>"] = new JsonObject { ["id"] = "<s>", ["ids"] = new JsonArray(BosId), ["tokens"] = new JsonArray("<s>") },
                },
            },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["fuse_unk"] = false, ["byte_fallback"] = false,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray(merges.Select(m => (JsonNode)new JsonArray(m.Left, m.Right)).ToArray()),
            },
        };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>GPT-2's reversible byte → printable character map.</summary>
    internal static char[] ByteToChar()
    {
        var map = new char[256];
        var direct = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToHashSet();
        int extra = 0;
        for (int b = 0; b < 256; b++)
            map[b] = direct.Contains(b) ? (char)b : (char)(256 + extra++);
        return map;
    }
}
