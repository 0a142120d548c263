using System.Text;
using EraserWorker.Core.Formats;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Tests.TestSupport;
using Xunit.Abstractions;

namespace EraserWorker.Core.Tests.Formats;

public sealed class PeftAdapterTests(ITestOutputHelper output) : IDisposable
{
    private const string Q = "base_model.model.model.layers.0.self_attn.q_proj.";
    private const string V = "base_model.model.model.layers.0.self_attn.v_proj.";
    private const string Head = "base_model.model.score.weight";
    private const string PositionIds = "base_model.model.position_ids";

    // Deliberately idiosyncratic formatting: the output must keep these exact bytes.
    private const string ConfigText = "{\n    \"peft_type\": \"LORA\",  \"r\": 2,\n\t\"lora_alpha\": 16,\n    \"target_modules\": [\"q_proj\", \"v_proj\"],\n    \"modules_to_save\": [\"score\"], \"note\": \"é\"\n}\n";

    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>θ's tensors, listed in an order that differs from the file's.</summary>
    private static readonly ParameterSpec[] Parameters =
    [
        new(V + "lora_B.weight", [6, 2]),
        new(Q + "lora_A.weight", [2, 5]),
        new(V + "lora_A.weight", [2, 5]),
        new(Q + "lora_B.weight", [6, 2]),
    ];

    /// <summary>A hand-built adapter in <paramref name="dtype"/> with a modules_to_save head and an I64 tensor,
    /// written by the independent test writer. Returns the folder and each tensor's reference values.</summary>
    private (string Folder, Dictionary<string, double[]> Values) BuildAdapter(string dtype, string name)
    {
        string folder = _temp.Sub(name);
        Directory.CreateDirectory(folder);
        File.WriteAllBytes(Path.Combine(folder, PeftAdapter.ConfigFileName), Encoding.UTF8.GetBytes(ConfigText));
        var random = new Random(dtype.Length * 31 + name.Length);
        var values = new Dictionary<string, double[]>();
        var tensors = new List<IndependentSafetensors.Tensor>();
        void Add(string key, long[] shape, string type)
        {
            int count = (int)shape.Aggregate(1L, (a, b) => a * b);
            // Values exactly representable in the dtype: encode, then decode with the reference.
            var raw = RawSafetensors.Encode(type, Enumerable.Range(0, count).Select(_ => random.NextDouble() * 4 - 2));
            values[key] = RawSafetensors.Decode(type, raw);
            tensors.Add(new IndependentSafetensors.Tensor(key, type, shape, raw));
        }
        Add(Head, [3, 5], dtype);
        Add(Q + "lora_A.weight", [2, 5], dtype);
        Add(Q + "lora_B.weight", [6, 2], dtype);
        var ids = new byte[3 * 8];
        random.NextBytes(ids);
        tensors.Add(new IndependentSafetensors.Tensor(PositionIds, "I64", [1, 3], ids));
        Add(V + "lora_A.weight", [2, 5], dtype);
        Add(V + "lora_B.weight", [6, 2], dtype);
        IndependentSafetensors.Write(Path.Combine(folder, PeftAdapter.WeightsFileName), tensors,
            new Dictionary<string, string> { ["format"] = "pt", ["producer"] = "tests" });
        return (folder, values);
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("F16")]
    [InlineData("BF16")]
    public void ReadParameters_ConcatenatesInTheGivenOrder(string dtype)
    {
        var (folder, values) = BuildAdapter(dtype, "adapter-" + dtype);
        var adapter = PeftAdapter.Open(folder);
        var theta = adapter.ReadParameters(Parameters);
        var expected = Parameters.SelectMany(p => values[p.Name]).ToArray();
        Assert.Equal(expected, theta);
        Assert.Equal("LORA", (string?)adapter.Config["peft_type"]);
        Assert.Equal(Path.GetFullPath(folder), adapter.Directory);
        Assert.Equal(values[Head], adapter.ReadTensor(Head));
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("F16")]
    [InlineData("BF16")]
    public void WriteUpdated_ChangesOnlyTheListedTensors(string dtype)
    {
        var (folder, _) = BuildAdapter(dtype, "adapter-" + dtype);
        var adapter = PeftAdapter.Open(folder);
        var theta = adapter.ReadParameters(Parameters);
        var random = new Random(3);
        var updated = theta.Select(t => t + random.NextDouble() - 0.5).ToArray();
        string outFolder = _temp.Sub("out-" + dtype);
        adapter.WriteUpdated(outFolder, Parameters, updated);

        Assert.Equal(new[] { PeftAdapter.ConfigFileName, PeftAdapter.WeightsFileName },
            Directory.GetFiles(outFolder).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(File.ReadAllBytes(Path.Combine(folder, PeftAdapter.ConfigFileName)), File.ReadAllBytes(Path.Combine(outFolder, PeftAdapter.ConfigFileName)));
        AssertOnlyListedTensorsChanged(Path.Combine(folder, PeftAdapter.WeightsFileName), Path.Combine(outFolder, PeftAdapter.WeightsFileName), Parameters.Select(p => p.Name));

        // The listed tensors hold θ' rounded (once) to the dtype by the reference encoders.
        var after = RawSafetensors.ParseFile(Path.Combine(outFolder, PeftAdapter.WeightsFileName));
        long at = 0;
        foreach (var p in Parameters)
        {
            var slice = updated.AsSpan((int)at, (int)p.Count).ToArray();
            Assert.Equal(RawSafetensors.Encode(dtype, slice), after.Bytes(p.Name));
            at += p.Count;
        }
        var reread = PeftAdapter.Open(outFolder).ReadParameters(Parameters);
        Assert.Equal(Parameters.SelectMany(p => RawSafetensors.Decode(dtype, after.Bytes(p.Name))), reread);
        Assert.Empty(Directory.GetDirectories(_temp.Path, ".out-*")); // no temporary folder left
    }

    [Fact]
    public void An_adapter_written_by_peft_survives_read_update_write_with_only_its_lora_tensors_changed()
    {
        // Shipped with the tests (Fixtures/peft-gpt2-seqcls, copied to the output folder): its absence is a failure.
        string fixture = Path.Combine(AppContext.BaseDirectory, "Fixtures", "peft-gpt2-seqcls");
        Assert.True(File.Exists(Path.Combine(fixture, PeftAdapter.WeightsFileName)), $"the PEFT fixture is missing from {fixture}");
        string folder = _temp.Sub("gpt2");
        Directory.CreateDirectory(folder);
        foreach (string name in new[] { PeftAdapter.ConfigFileName, PeftAdapter.WeightsFileName })
            File.WriteAllBytes(Path.Combine(folder, name), File.ReadAllBytes(Path.Combine(fixture, name)));

        var adapter = PeftAdapter.Open(folder);
        Assert.Equal("pt", adapter.Header.Metadata!["format"]);
        Assert.Equal(25, adapter.Header.Entries.Count);
        // θ: every LoRA tensor, in reverse file order (not the file's order).
        var parameters = adapter.Header.Entries.Where(e => e.Name.Contains(".lora_", StringComparison.Ordinal))
            .Reverse().Select(e => new ParameterSpec(e.Name, e.Shape)).ToArray();
        Assert.Equal(24, parameters.Length);
        var theta = adapter.ReadParameters(parameters);
        var independent = parameters.SelectMany(p => IndependentSafetensors.ReadF32(Path.Combine(folder, PeftAdapter.WeightsFileName), p.Name)).ToArray();
        Assert.Equal(independent, theta);

        var updated = theta.Select((t, i) => t + (i % 13 - 6) * 1e-3).ToArray();
        string outFolder = _temp.Sub("gpt2-v2");
        adapter.WriteUpdated(outFolder, parameters, updated);

        string source = Path.Combine(folder, PeftAdapter.WeightsFileName), written = Path.Combine(outFolder, PeftAdapter.WeightsFileName);
        Assert.Equal(File.ReadAllBytes(Path.Combine(fixture, PeftAdapter.ConfigFileName)), File.ReadAllBytes(Path.Combine(outFolder, PeftAdapter.ConfigFileName)));
        AssertOnlyListedTensorsChanged(source, written, parameters.Select(p => p.Name));
        var after = PeftAdapter.Open(outFolder);
        Assert.Equal(adapter.Header.Metadata, after.Header.Metadata);
        Assert.Equal(adapter.Header.Entries, after.Header.Entries);
        Assert.Equal(updated.Select(u => (double)(float)u), after.ReadParameters(parameters));
        Assert.Equal(adapter.ReadTensor("base_model.model.score.weight"), after.ReadTensor("base_model.model.score.weight"));
        output.WriteLine($"fixture: {parameters.Length} LoRA tensors, P = {theta.Length}; sha256 {FileHash.Sha256OfFile(written)}");
    }

    private static void AssertOnlyListedTensorsChanged(string sourcePath, string writtenPath, IEnumerable<string> listed)
    {
        var before = RawSafetensors.ParseFile(sourcePath);
        var after = RawSafetensors.ParseFile(writtenPath);
        Assert.Equal(before.File.Length, after.File.Length);
        Assert.Equal(before.HeaderBytes, after.HeaderBytes);
        Assert.Equal(before.Metadata, after.Metadata);
        var changed = new bool[before.File.Length];
        foreach (string name in listed)
        {
            var t = before.Tensors[name];
            changed.AsSpan((int)(before.DataStart + t.Begin), (int)(t.End - t.Begin)).Fill(true);
        }
        for (int i = 0; i < changed.Length; i++)
            if (!changed[i] && before.File[i] != after.File[i])
                Assert.Fail($"byte {i} outside the listed tensors changed");
    }

    [Fact]
    public void Open_RejectsIncompleteFolders_WithClearMessages()
    {
        Assert.Throws<DirectoryNotFoundException>(() => PeftAdapter.Open(_temp.Sub("nowhere")));

        string folder = _temp.Sub("partial");
        Directory.CreateDirectory(folder);
        var e1 = Assert.Throws<FileNotFoundException>(() => PeftAdapter.Open(folder));
        Assert.Contains("adapter_config.json is missing", e1.Message);

        File.WriteAllText(Path.Combine(folder, PeftAdapter.ConfigFileName), "{}");
        File.WriteAllText(Path.Combine(folder, "adapter_model.bin"), "pickle");
        var e2 = Assert.Throws<FileNotFoundException>(() => PeftAdapter.Open(folder));
        Assert.Contains("adapter_model.safetensors is missing", e2.Message);
        Assert.Contains("adapter_model.bin", e2.Message);

        var (good, _) = BuildAdapter("F32", "good");
        File.WriteAllText(Path.Combine(good, PeftAdapter.ConfigFileName), "[1, 2]");
        Assert.Contains("not a JSON object", Assert.Throws<InvalidDataException>(() => PeftAdapter.Open(good)).Message);
        File.WriteAllText(Path.Combine(good, PeftAdapter.ConfigFileName), "{\"r\": 8,");
        Assert.Contains("not valid JSON", Assert.Throws<InvalidDataException>(() => PeftAdapter.Open(good)).Message);

        var (broken, _) = BuildAdapter("F32", "broken");
        string weights = Path.Combine(broken, PeftAdapter.WeightsFileName);
        File.WriteAllBytes(weights, File.ReadAllBytes(weights)[..^4]);
        var e3 = Assert.Throws<InvalidDataException>(() => PeftAdapter.Open(broken));
        Assert.Contains("adapter_model.safetensors:", e3.Message);
        Assert.Contains("out of bounds", e3.Message);
    }

    [Fact]
    public void ReadParameters_ValidatesNamesShapesAndDTypes()
    {
        var (folder, _) = BuildAdapter("F16", "adapter");
        var adapter = PeftAdapter.Open(folder);
        Assert.Contains("no tensor 'missing.weight'",
            Assert.Throws<InvalidDataException>(() => adapter.ReadParameters([new ParameterSpec("missing.weight", [2, 5])])).Message);
        Assert.Contains("has shape [2, 5] but the parameter list says [5, 2]",
            Assert.Throws<InvalidDataException>(() => adapter.ReadParameters([new ParameterSpec(Q + "lora_A.weight", [5, 2])])).Message);
        Assert.Contains("I64",
            Assert.Throws<InvalidDataException>(() => adapter.ReadParameters([new ParameterSpec(PositionIds, [1, 3])])).Message);
        Assert.Contains("listed twice",
            Assert.Throws<InvalidDataException>(() => adapter.ReadParameters([Parameters[0], Parameters[0]])).Message);
    }

    [Fact]
    public void WriteUpdated_IsAtomic_AndRefusesNonEmptyOutput()
    {
        var (folder, _) = BuildAdapter("F16", "adapter");
        var adapter = PeftAdapter.Open(folder);
        var theta = adapter.ReadParameters(Parameters);

        // A non-empty output folder is refused and left alone.
        string occupied = _temp.Sub("occupied");
        Directory.CreateDirectory(occupied);
        File.WriteAllText(Path.Combine(occupied, "keep.txt"), "keep");
        Assert.Contains("not empty", Assert.Throws<IOException>(() => adapter.WriteUpdated(occupied, Parameters, theta)).Message);
        Assert.Equal(new[] { "keep.txt" }, Directory.GetFiles(occupied).Select(Path.GetFileName));

        // A value that overflows F16 fails the write: nothing appears, no temporary folder remains.
        string target = _temp.Sub("v2");
        var bad = (double[])theta.Clone();
        bad[^1] = 1e6;
        Assert.Throws<ArgumentException>(() => adapter.WriteUpdated(target, Parameters, bad));
        Assert.False(Directory.Exists(target));
        Assert.Empty(Directory.GetDirectories(_temp.Path, ".v2*"));

        Assert.Throws<ArgumentException>(() => adapter.WriteUpdated(target, Parameters, theta.AsSpan(1)));
        Assert.False(Directory.Exists(target));

        // An existing empty folder is fine; unchanged θ reproduces the weights file bit-for-bit.
        Directory.CreateDirectory(target);
        adapter.WriteUpdated(target, Parameters, theta);
        Assert.Equal(File.ReadAllBytes(adapter.WeightsPath), File.ReadAllBytes(Path.Combine(target, PeftAdapter.WeightsFileName)));

        Assert.Throws<IOException>(() => adapter.WriteUpdated(folder, Parameters, theta));
    }

    [Fact]
    public void Sha256OfFile_IsLowercaseHex()
    {
        string path = _temp.Sub("abc.txt");
        File.WriteAllText(path, "abc");
        Assert.Equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", FileHash.Sha256OfFile(path));
    }
}
