using EraserWorker.Models.Tests.TestSupport;
using EraserWorker.TestSupport;

namespace EraserWorker.Models.Tests;

/// <summary>Text samples through a byte-level BPE tokenizer.json (LLaMA 3 / Qwen2 style), written by the test.</summary>
public sealed class TokenizerTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private string WriteTokenizer()
    {
        string path = _temp.Sub("tokenizer.json");
        TinyByteLevelTokenizer.Write(path);
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
