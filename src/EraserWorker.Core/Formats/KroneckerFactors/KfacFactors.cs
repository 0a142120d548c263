using System.Runtime.InteropServices;
using System.Text.Json;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.Safetensors;
using Microsoft.Win32.SafeHandles;

namespace EraserWorker.Core.Formats.KroneckerFactors;

/// <summary>
/// An <c>eraser.kfac/v1</c> folder (docs/formats/kfac.md): per LoRA matrix of the cache's parameters, in the cache's
/// order, the Kronecker eigenbases and eigenvalue corrections. <see cref="Open"/> validates everything before it returns
/// (manifest, checksum, tensors and shapes, finiteness, orthonormal bases, Λ ≥ 0, and — with <see cref="MatchesCache"/> —
/// the cache's parameter layout); every failure is a <see cref="GradientCacheException"/> (<c>InvalidCache</c>).
/// </summary>
public sealed class KfacFactors
{
    /// <summary>How far QᵀQ may be from I (float32 storage of float64 eigenvectors is ~1e-7 off).</summary>
    private const double OrthonormalTolerance = 1e-3;

    private KfacFactors(string directory, KfacManifest manifest, KfacModule[] modules)
    {
        Directory = directory;
        Manifest = manifest;
        Modules = modules;
    }

    public string Directory { get; }

    public KfacManifest Manifest { get; }

    /// <summary>The modules in the cache's parameter order.</summary>
    public IReadOnlyList<KfacModule> Modules { get; }

    /// <summary>n: training samples the covariances and corrections were averaged over.</summary>
    public long Samples => Manifest.Samples;

    /// <summary>P: Σ d_out × d_in.</summary>
    public long ParameterCount => Manifest.ParameterCount;

    /// <summary>Bytes of the factors file.</summary>
    public long FileBytes { get; private init; }

    /// <summary>The folder the factors of <paramref name="cacheDirectory"/> live in when they sit beside it.</summary>
    public static string BesideCache(string cacheDirectory) => Path.Combine(cacheDirectory, "kfac");

    public static KfacFactors Open(string directory)
    {
        string full = Path.GetFullPath(directory);
        string manifestPath = Path.Combine(full, KfacManifest.FileName);
        if (!File.Exists(manifestPath))
            throw KfacErrors.Invalid(full, $"{KfacManifest.FileName} is missing.");
        KfacManifest? manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<KfacManifest>(File.ReadAllBytes(manifestPath), KfacManifest.Json);
        }
        catch (JsonException e)
        {
            throw KfacErrors.Invalid(full, $"{KfacManifest.FileName} is not valid JSON: {e.Message}");
        }
        if (manifest is null)
            throw KfacErrors.Invalid(full, $"{KfacManifest.FileName} is empty.");
        CheckManifest(full, manifest);

        string file = Path.Combine(full, manifest.File);
        if (!File.Exists(file))
            throw KfacErrors.Invalid(full, $"the factors file '{manifest.File}' is missing.");
        string sha = FileHash.Sha256OfFile(file);
        if (!string.Equals(sha, manifest.Sha256, StringComparison.OrdinalIgnoreCase))
            throw KfacErrors.Invalid(full, $"'{manifest.File}' has SHA-256 {sha}, but {KfacManifest.FileName} records {manifest.Sha256}.");

        using var handle = File.OpenHandle(file, FileMode.Open, FileAccess.Read, FileShare.Read);
        SafetensorsHeader header;
        try
        {
            header = SafetensorsHeader.Read(handle, manifest.File);
        }
        catch (InvalidDataException e)
        {
            throw KfacErrors.Invalid(full, e.Message);
        }
        var modules = new KfacModule[manifest.Modules.Count];
        for (int m = 0; m < modules.Length; m++)
        {
            var entry = manifest.Modules[m];
            var qa = ReadTensor(full, handle, header, TensorName(m, "qa"), [entry.InDim, entry.InDim]);
            var qs = ReadTensor(full, handle, header, TensorName(m, "qs"), [entry.OutDim, entry.OutDim]);
            var lambda = ReadTensor(full, handle, header, TensorName(m, "lambda"), [entry.OutDim, entry.InDim]);
            CheckOrthonormal(full, entry.Parameter, "input basis Q_A", qa, entry.InDim);
            CheckOrthonormal(full, entry.Parameter, "output basis Q_S", qs, entry.OutDim);
            int negative = Array.FindIndex(lambda, v => v < 0);
            if (negative >= 0)
                throw KfacErrors.Invalid(full, $"module '{entry.Parameter}': eigenvalue correction {negative} is negative ({lambda[negative]}); Λ is a mean of squares.");
            modules[m] = new KfacModule(entry.Parameter, entry.OutDim, entry.InDim, entry.Offset, qa, qs, lambda);
        }
        if (header.Entries.Count != 3 * modules.Length)
            throw KfacErrors.Invalid(full, $"'{manifest.File}' holds {header.Entries.Count} tensors; {modules.Length} modules need {3 * modules.Length}.");
        return new KfacFactors(full, manifest, modules) { FileBytes = header.FileLength };
    }

    /// <summary>Refuses factors whose modules are not exactly the cache's parameters (names, shapes, order).</summary>
    public void MatchesCache(IReadOnlyList<ParameterSpec> parameters, string cacheLabel)
    {
        if (parameters.Count != Modules.Count)
            throw KfacErrors.Invalid(Directory, $"{Modules.Count} modules, but {cacheLabel} has {parameters.Count} parameters; the factors must cover exactly the cache's parameters, in its order.");
        for (int i = 0; i < parameters.Count; i++)
            if (!parameters[i].Equals(Modules[i].Spec))
                throw KfacErrors.Invalid(Directory, $"module {i} is {Modules[i].Spec}, but parameter {i} of {cacheLabel} is {parameters[i]}.");
    }

    internal static string TensorName(int module, string part) => $"modules.{module}.{part}";

    private static void CheckManifest(string dir, KfacManifest manifest)
    {
        if (manifest.Format != KfacManifest.FormatName)
            throw KfacErrors.Invalid(dir, $"format '{manifest.Format}' is not {KfacManifest.FormatName}.");
        if (manifest.Samples < 1)
            throw KfacErrors.Invalid(dir, $"samples must be ≥ 1 (got {manifest.Samples}).");
        if (!double.IsFinite(manifest.DampingHint) || manifest.DampingHint < 0)
            throw KfacErrors.Invalid(dir, $"dampingHint must be a finite number ≥ 0 (got {manifest.DampingHint}).");
        if (manifest.Modules is null || manifest.Modules.Count == 0)
            throw KfacErrors.Invalid(dir, "there are no modules.");
        if (string.IsNullOrEmpty(manifest.File) || Path.GetFileName(manifest.File) != manifest.File)
            throw KfacErrors.Invalid(dir, $"file '{manifest.File}' must be a plain file name in the folder.");
        if (string.IsNullOrEmpty(manifest.Sha256))
            throw KfacErrors.Invalid(dir, "sha256 is missing.");
        long offset = 0;
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var m in manifest.Modules)
        {
            if (string.IsNullOrEmpty(m.Parameter) || !names.Add(m.Parameter))
                throw KfacErrors.Invalid(dir, $"module '{m.Parameter}' is unnamed or listed twice.");
            if (m.OutDim < 1 || m.InDim < 1)
                throw KfacErrors.Invalid(dir, $"module '{m.Parameter}': dims [{m.OutDim}, {m.InDim}] must be ≥ 1.");
            if (m.Offset != offset)
                throw KfacErrors.Invalid(dir, $"module '{m.Parameter}' starts at offset {m.Offset}, but the modules before it end at {offset} (modules are contiguous, in θ's order).");
            offset = checked(offset + (long)m.OutDim * m.InDim);
        }
        if (offset != manifest.ParameterCount)
            throw KfacErrors.Invalid(dir, $"the modules hold {offset} parameters, but parameterCount is {manifest.ParameterCount}.");
    }

    private static float[] ReadTensor(string dir, SafeFileHandle handle, SafetensorsHeader header, string name, long[] shape)
    {
        if (!header.TryGet(name, out var entry))
            throw KfacErrors.Invalid(dir, $"tensor '{name}' is missing.");
        if (entry.DType != DTypeConversion.F32)
            throw KfacErrors.Invalid(dir, $"tensor '{name}' is {entry.DType}; factors are F32.");
        if (!entry.Shape.SequenceEqual(shape))
            throw KfacErrors.Invalid(dir, $"tensor '{name}' has shape {ShapeMath.Format(entry.Shape)}, expected {ShapeMath.Format(shape)}.");
        var values = new float[entry.ElementCount];
        try
        {
            FileRead.ReadExactly(handle, MemoryMarshal.AsBytes(values.AsSpan()), header.FileOffsetOf(entry), header.FileName ?? name);
        }
        catch (InvalidDataException e)
        {
            throw KfacErrors.Invalid(dir, e.Message);
        }
        int bad = DTypeConversion.IndexOfNonFinite(values);
        if (bad >= 0)
            throw KfacErrors.Invalid(dir, $"tensor '{name}' holds a non-finite value ({values[bad]}) at element {bad}.");
        return values;
    }

    /// <summary>QᵀQ = I within <see cref="OrthonormalTolerance"/>: the inverse in the eigenbasis relies on it. Every pair
    /// of columns up to d = 256; above, to stay O(d²), each column's norm and its product with the next column.</summary>
    private static void CheckOrthonormal(string dir, string parameter, string what, float[] q, int d)
    {
        bool full = d <= 256;
        for (int i = 0; i < d; i++)
            for (int j = i; j < (full ? d : Math.Min(d, i + 2)); j++)
            {
                double dot = 0;
                for (int k = 0; k < d; k++)
                    dot += (double)q[k * d + i] * q[k * d + j];
                double expected = i == j ? 1 : 0;
                if (Math.Abs(dot - expected) > OrthonormalTolerance)
                    throw KfacErrors.Invalid(dir, $"module '{parameter}': the {what} is not orthonormal (column {i}·column {j} = {dot:G6}).");
            }
    }
}
