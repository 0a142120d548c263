using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.GradientCaches;

namespace EraserWorker.Models;

/// <summary>One training sample as token ids. The loss ℓ is the mean cross-entropy of the response tokens, each
/// predicted from everything before it (the prompt and the earlier response tokens).</summary>
public sealed record TokenizedSample(string Id, int[] PromptIds, int[] ResponseIds)
{
    /// <summary>Tokens fed to the model: prompt + response without its last token.</summary>
    public int InputLength => PromptIds.Length + ResponseIds.Length - 1;
}

/// <summary>
/// Training data as JSONL, one sample a line: <c>{"id", "prompt", "response"}</c> (text, needs a tokenizer) or
/// <c>{"id", "promptIds", "responseIds"}</c> (token ids). Blank lines are skipped. Ids follow SPEC §3 and are unique.
/// </summary>
public static class TrainingData
{
    /// <summary>Reads and validates a JSONL file; text samples are tokenised with <paramref name="tokenizer"/>.</summary>
    /// <exception cref="InvalidDataException">A bad line; the message names the file and line.</exception>
    public static IReadOnlyList<TokenizedSample> Load(string path, int vocabSize, ModelTokenizer? tokenizer = null)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"The data file '{path}' does not exist.", path);
        var samples = new List<TokenizedSample>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        int lineNumber = 0;
        foreach (var line in File.ReadLines(path, Encoding.UTF8))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line))
                continue;
            string where = $"{Path.GetFileName(path)}:{lineNumber}";
            var sample = ParseLine(line, where, vocabSize, tokenizer);
            if (!seen.Add(sample.Id))
                throw new InvalidDataException($"{where}: duplicate id '{sample.Id}'.");
            samples.Add(sample);
        }
        if (samples.Count == 0)
            throw new InvalidDataException($"{path}: no samples.");
        return samples;
    }

    public static TokenizedSample ParseLine(string line, string where, int vocabSize, ModelTokenizer? tokenizer)
    {
        JsonObject o;
        try
        {
            o = JsonNode.Parse(line) as JsonObject ?? throw new InvalidDataException($"{where}: not a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{where}: not valid JSON ({e.Message}).", e);
        }
        string id = o["id"] is JsonValue idValue && idValue.TryGetValue(out string? s) ? s
            : o["id"] is JsonValue n && n.TryGetValue(out long l) ? l.ToString(System.Globalization.CultureInfo.InvariantCulture)
            : throw new InvalidDataException($"{where}: missing 'id'.");
        string? problem = SampleIds.Problem(id);
        if (problem is not null)
            throw new InvalidDataException($"{where}: invalid id: {problem}.");
        int[] prompt, response;
        if (o.ContainsKey("promptIds") || o.ContainsKey("responseIds"))
        {
            prompt = Ids(o, "promptIds", where);
            response = Ids(o, "responseIds", where);
        }
        else if (o.ContainsKey("prompt") || o.ContainsKey("response"))
        {
            if (tokenizer is null)
                throw new InvalidDataException($"{where}: sample '{id}' is text (prompt/response) but no tokenizer was found (tokenizer.json or tokenizer.model in the model folder); give promptIds/responseIds instead.");
            string p = Text(o, "prompt", where), r = Text(o, "response", where);
            (prompt, response) = tokenizer.EncodeSample(p, r);
        }
        else
            throw new InvalidDataException($"{where}: a sample needs prompt/response or promptIds/responseIds.");
        if (prompt.Length == 0)
            throw new InvalidDataException($"{where}: sample '{id}' has an empty prompt (the first response token needs something to be predicted from).");
        if (response.Length == 0)
            throw new InvalidDataException($"{where}: sample '{id}' has an empty response (its loss would be undefined).");
        foreach (int t in prompt.Concat(response))
            if (t < 0 || t >= vocabSize)
                throw new InvalidDataException($"{where}: sample '{id}' has token id {t}, outside the vocabulary [0, {vocabSize}).");
        return new TokenizedSample(id, prompt, response);
    }

    /// <summary>Writes samples as token-id JSONL.</summary>
    public static void Write(string path, IEnumerable<TokenizedSample> samples)
    {
        using var writer = new StreamWriter(path, false, new UTF8Encoding(false));
        foreach (var s in samples)
            writer.WriteLine(new JsonObject
            {
                ["id"] = s.Id,
                ["promptIds"] = new JsonArray(s.PromptIds.Select(i => (JsonNode)JsonValue.Create(i)).ToArray()),
                ["responseIds"] = new JsonArray(s.ResponseIds.Select(i => (JsonNode)JsonValue.Create(i)).ToArray()),
            }.ToJsonString());
    }

    private static int[] Ids(JsonObject o, string key, string where)
    {
        if (o[key] is not JsonArray a)
            throw new InvalidDataException($"{where}: '{key}' must be an array of token ids.");
        var ids = new int[a.Count];
        for (int i = 0; i < ids.Length; i++)
            ids[i] = a[i] is JsonValue v && v.TryGetValue(out int t) ? t : throw new InvalidDataException($"{where}: '{key}'[{i}] is not an integer token id.");
        return ids;
    }

    private static string Text(JsonObject o, string key, string where) =>
        o[key] is JsonValue v && v.TryGetValue(out string? s) ? s : throw new InvalidDataException($"{where}: '{key}' must be a string.");
}
