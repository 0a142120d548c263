using System.Runtime.InteropServices;
using System.Text.Json;
using EraserWorker.Core.Formats.Safetensors;

namespace EraserWorker.Core.Formats.KroneckerFactors;

/// <summary>Writes an <c>eraser.kfac/v1</c> folder atomically: everything goes to a hidden sibling folder, which is
/// renamed to the destination only when complete, so a reader never sees a half-written folder.</summary>
public static class KfacFactorsWriter
{
    /// <param name="modules">In the cache's parameter order, contiguous offsets from 0.</param>
    /// <exception cref="ArgumentException">A value is non-finite, a shape does not match its dims, or Λ &lt; 0.</exception>
    /// <exception cref="IOException">The destination exists. On any failure nothing is left behind.</exception>
    public static void Write(string directory, IReadOnlyList<KfacModule> modules, long samples, double dampingHint)
    {
        string full = Path.GetFullPath(directory);
        if (System.IO.Directory.Exists(full) || File.Exists(full))
            throw new IOException($"'{full}' already exists; EK-FAC factors are written to a new folder.");
        long offset = 0;
        var tensors = new List<(string, string, IReadOnlyList<long>, ReadOnlyMemory<byte>)>();
        var entries = new List<KfacManifestModule>();
        for (int m = 0; m < modules.Count; m++)
        {
            var module = modules[m];
            if (module.Offset != offset)
                throw new ArgumentException($"Module '{module.Parameter}' starts at {module.Offset}, expected {offset}.", nameof(modules));
            Add(tensors, KfacFactors.TensorName(m, "qa"), module.InputBasis, module.InDim, module.InDim, module.Parameter);
            Add(tensors, KfacFactors.TensorName(m, "qs"), module.OutputBasis, module.OutDim, module.OutDim, module.Parameter);
            Add(tensors, KfacFactors.TensorName(m, "lambda"), module.Eigenvalues, module.OutDim, module.InDim, module.Parameter);
            if (module.Eigenvalues.Any(v => v < 0))
                throw new ArgumentException($"Module '{module.Parameter}': eigenvalue corrections must be ≥ 0.", nameof(modules));
            entries.Add(new KfacManifestModule(module.Parameter, module.OutDim, module.InDim, module.Offset));
            offset += module.Count;
        }

        string parent = Path.GetDirectoryName(full) ?? throw new IOException($"'{full}' has no parent folder.");
        System.IO.Directory.CreateDirectory(parent);
        string staging = Path.Combine(parent, $".{Path.GetFileName(full)}.partial-{Guid.NewGuid():N}");
        System.IO.Directory.CreateDirectory(staging);
        try
        {
            string file = Path.Combine(staging, KfacManifest.FactorsFileName);
            SafetensorsWriter.WriteFile(file, tensors, new Dictionary<string, string> { ["format"] = KfacManifest.FormatName });
            var manifest = new KfacManifest(KfacManifest.FormatName, samples, offset, dampingHint, entries,
                KfacManifest.FactorsFileName, FileHash.Sha256OfFile(file));
            File.WriteAllBytes(Path.Combine(staging, KfacManifest.FileName), JsonSerializer.SerializeToUtf8Bytes(manifest, KfacManifest.Json));
            System.IO.Directory.Move(staging, full);
        }
        catch
        {
            try { System.IO.Directory.Delete(staging, recursive: true); } catch (IOException) { }
            throw;
        }
    }

    private static void Add(List<(string, string, IReadOnlyList<long>, ReadOnlyMemory<byte>)> tensors, string name, float[] values,
        int rows, int columns, string parameter)
    {
        if (values.Length != (long)rows * columns)
            throw new ArgumentException($"Module '{parameter}': '{name}' has {values.Length} values, expected {rows} × {columns}.");
        if (DTypeConversion.IndexOfNonFinite(values) >= 0)
            throw new ArgumentException($"Module '{parameter}': '{name}' holds a non-finite value.");
        tensors.Add((name, DTypeConversion.F32, [rows, columns], MemoryMarshal.AsBytes(values.AsSpan()).ToArray()));
    }
}
