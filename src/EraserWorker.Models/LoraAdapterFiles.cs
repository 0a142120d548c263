using System.Runtime.InteropServices;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.Safetensors;

namespace EraserWorker.Models;

/// <summary>Reads θ from, and writes, PEFT LoRA adapter folders for a <see cref="LoraLayout"/>.</summary>
public static class LoraAdapterFiles
{
    /// <summary>
    /// Opens an adapter folder against a model: parses adapter_config.json, builds the layout and reads θ (float64, in
    /// the layout's order). Every tensor of the file must belong to the layout (no LoRA on lm_head or embeddings, no
    /// modules_to_save), and every module of the layout must be in the file with PEFT's shapes.
    /// </summary>
    public static (LoraLayout Layout, double[] Theta) Read(string adapterDirectory, LlamaConfig model)
    {
        var config = LoraConfig.Load(adapterDirectory);
        var layout = new LoraLayout(model, config);
        var adapter = PeftAdapter.Open(adapterDirectory);
        var expected = layout.Parameters.Select(p => p.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var entry in adapter.Header.Entries)
            if (!expected.Contains(entry.Name))
                throw new InvalidDataException(
                    $"Adapter '{adapterDirectory}': tensor '{entry.Name}' is not a LoRA matrix of a module its adapter_config.json targets on this model (supported: lora_A/lora_B of q,k,v,o,gate,up,down_proj).");
        double[] theta;
        try
        {
            theta = adapter.ReadParameters(layout.Parameters);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{e.Message} (Is the adapter made for this model and configuration?)", e);
        }
        if (!theta.All(double.IsFinite))
            throw new InvalidDataException($"Adapter '{adapterDirectory}' has non-finite LoRA weights.");
        return (layout, theta);
    }

    /// <summary>
    /// Writes a PEFT adapter folder atomically (temporary sibling folder renamed into place): adapter_config.json and
    /// adapter_model.safetensors with θ's tensors in <paramref name="dtype"/> (F32 default) and metadata format=pt.
    /// </summary>
    public static void Write(string directory, LoraLayout layout, ReadOnlySpan<double> theta, string dtype = DTypeConversion.F32)
    {
        if (theta.Length != layout.ParameterCount)
            throw new ArgumentException($"θ has {theta.Length} values; the layout has P = {layout.ParameterCount}.", nameof(theta));
        string full = Path.GetFullPath(directory.TrimEnd('/', '\\'));
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
            throw new IOException($"Refusing to write the adapter into '{directory}': the folder exists and is not empty.");
        string parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        string temporary = Path.Combine(parent, $".{Path.GetFileName(full)}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temporary);
        try
        {
            File.WriteAllText(Path.Combine(temporary, LoraConfig.FileName), layout.Lora.ToJson());
            int size = DTypeConversion.ElementSize(dtype);
            var tensors = new List<(string, string, IReadOnlyList<long>, ReadOnlyMemory<byte>)>();
            long at = 0;
            foreach (var spec in layout.Parameters)
            {
                var bytes = new byte[spec.Count * size];
                DTypeConversion.FromDouble(dtype, theta.Slice((int)at, (int)spec.Count), bytes);
                tensors.Add((spec.Name, dtype, spec.Shape, bytes));
                at += spec.Count;
            }
            SafetensorsWriter.WriteFile(Path.Combine(temporary, PeftAdapter.WeightsFileName), tensors,
                new Dictionary<string, string> { ["format"] = "pt" });
            if (Directory.Exists(full))
                Directory.Delete(full);
            Directory.Move(temporary, full);
        }
        catch
        {
            try
            {
                Directory.Delete(temporary, recursive: true);
            }
            catch (IOException)
            {
            }
            throw;
        }
    }

    /// <summary>PEFT's initialisation: A ~ kaiming_uniform(a=√5) = U(−1/√in, 1/√in), B = 0 (so the adapted model
    /// starts equal to the base model). Deterministic in <paramref name="seed"/>.</summary>
    public static double[] Initialise(LoraLayout layout, int seed)
    {
        var theta = new double[layout.ParameterCount];
        var random = new Random(seed);
        foreach (var m in layout.Modules)
        {
            double bound = 1.0 / Math.Sqrt(m.In);
            for (long i = 0; i < m.CountA; i++)
                theta[m.OffsetA + i] = (float)((random.NextDouble() * 2 - 1) * bound);
        }
        return theta;
    }

    internal static float[] ToSingle(ReadOnlySpan<double> values)
    {
        var result = new float[values.Length];
        DTypeConversion.DoubleToSingle(values, result);
        return result;
    }

    internal static ReadOnlySpan<byte> Bytes(float[] values) => MemoryMarshal.AsBytes(values.AsSpan());
}
