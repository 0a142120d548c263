using System.Buffers;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.Safetensors;

namespace EraserWorker.Core.Formats.Adapters;

/// <summary>
/// A PEFT LoRA adapter folder (SPEC §2): <c>adapter_config.json</c> + <c>adapter_model.safetensors</c>.
/// θ is read from and written to the tensors a gradient cache lists (<see cref="ParameterSpec"/>), in that order;
/// every other byte of the adapter is carried through unchanged.
/// </summary>
public sealed class PeftAdapter
{
    public const string ConfigFileName = EraserWorker.Contracts.StoredFileNames.AdapterConfig;
    public const string WeightsFileName = EraserWorker.Contracts.StoredFileNames.AdapterWeights;

    private const int ChunkBytes = 4 << 20;
    private readonly byte[] _configBytes;
    private readonly JsonObject _config;

    private PeftAdapter(string directory, byte[] configBytes, JsonObject config, SafetensorsHeader header)
    {
        Directory = directory;
        _configBytes = configBytes;
        _config = config;
        Header = header;
    }

    /// <summary>Full path of the adapter folder.</summary>
    public string Directory { get; }

    public string WeightsPath => Path.Combine(Directory, WeightsFileName);

    public string ConfigPath => Path.Combine(Directory, ConfigFileName);

    /// <summary>The validated header of <c>adapter_model.safetensors</c>.</summary>
    public SafetensorsHeader Header { get; }

    /// <summary>The parsed <c>adapter_config.json</c> (a copy; the file itself is always written back byte-for-byte).</summary>
    public JsonObject Config => (JsonObject)_config.DeepClone();

    /// <summary>The exact bytes of <c>adapter_config.json</c> as read by <see cref="Open"/>.</summary>
    public ReadOnlyMemory<byte> ConfigBytes => _configBytes;

    /// <summary>Opens and validates an adapter folder.</summary>
    /// <exception cref="DirectoryNotFoundException">No such folder.</exception>
    /// <exception cref="FileNotFoundException">adapter_config.json or adapter_model.safetensors is missing.</exception>
    /// <exception cref="InvalidDataException">The config is not a JSON object, or the safetensors file is invalid.</exception>
    public static PeftAdapter Open(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        string full = Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(full))
            throw new DirectoryNotFoundException($"Adapter folder '{directory}' does not exist.");
        string configPath = Path.Combine(full, ConfigFileName);
        if (!File.Exists(configPath))
            throw new FileNotFoundException($"'{directory}' is not a PEFT adapter folder: {ConfigFileName} is missing.", configPath);
        string weightsPath = Path.Combine(full, WeightsFileName);
        if (!File.Exists(weightsPath))
        {
            string hint = File.Exists(Path.Combine(full, "adapter_model.bin"))
                ? " (it has adapter_model.bin: PyTorch pickle checkpoints are not supported; save the adapter with safe_serialization=True)"
                : "";
            throw new FileNotFoundException($"'{directory}' is not a usable PEFT adapter folder: {WeightsFileName} is missing{hint}.", weightsPath);
        }

        byte[] configBytes = File.ReadAllBytes(configPath);
        JsonNode? config;
        try
        {
            config = JsonNode.Parse(configBytes, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Adapter '{directory}': {ConfigFileName} is not valid JSON ({e.Message}).", e);
        }
        if (config is not JsonObject configObject)
            throw new InvalidDataException($"Adapter '{directory}': {ConfigFileName} is not a JSON object.");

        SafetensorsHeader header;
        try
        {
            header = SafetensorsHeader.ReadFile(weightsPath);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"Adapter '{directory}': {e.Message}", e);
        }
        return new PeftAdapter(full, configBytes, configObject, header);
    }

    /// <summary>
    /// θ: the listed tensors concatenated row-major in the <em>given</em> order, as float64 (exact).
    /// </summary>
    /// <exception cref="InvalidDataException">A tensor is missing, has another shape, or is not F32/F16/BF16; or a
    /// name is listed twice.</exception>
    public double[] ReadParameters(IReadOnlyList<ParameterSpec> parameters)
    {
        var entries = Resolve(parameters);
        long total = ParameterSpec.TotalCount(parameters);
        if (total > Array.MaxLength)
            throw new NotSupportedException($"θ has {total} elements, more than an array holds.");
        var theta = new double[total];
        using var handle = File.OpenHandle(WeightsPath, FileMode.Open, FileAccess.Read, FileShare.Read);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
        try
        {
            long at = 0;
            foreach (var entry in entries)
            {
                ReadEntry(handle, entry, buffer, theta.AsSpan((int)at, (int)entry.ElementCount));
                at += entry.ElementCount;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return theta;
    }

    /// <summary>One floating-point tensor (F32, F16, BF16 or F64) as float64, row-major.</summary>
    public double[] ReadTensor(string name)
    {
        var entry = Header[name];
        if (!DTypeConversion.IsFloating(entry.DType))
            throw new InvalidDataException($"Adapter '{Directory}': tensor '{name}' is {entry.DType}, not a floating-point tensor.");
        var values = new double[entry.ElementCount];
        using var handle = File.OpenHandle(WeightsPath, FileMode.Open, FileAccess.Read, FileShare.Read);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
        try
        {
            ReadEntry(handle, entry, buffer, values);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return values;
    }

    /// <summary>
    /// Writes the adapter with θ replaced by <paramref name="theta"/> to <paramref name="outputDirectory"/>:
    /// <c>adapter_config.json</c> byte-for-byte, and <c>adapter_model.safetensors</c> with the same header bytes
    /// and every tensor bit-for-bit except the listed ones, which are encoded in their own dtype (rounded to
    /// nearest even, once, from float64). Other files of the source folder are not copied.
    /// </summary>
    /// <remarks>Atomic: the files are written into a temporary sibling folder that is renamed into place at the end;
    /// on failure it is deleted and the output folder does not appear.</remarks>
    /// <exception cref="IOException">The output folder exists and is not empty.</exception>
    /// <exception cref="ArgumentException"><paramref name="theta"/> has the wrong length or a value that is not finite
    /// in its tensor's dtype.</exception>
    public unsafe void WriteUpdated(string outputDirectory, IReadOnlyList<ParameterSpec> parameters, ReadOnlySpan<double> theta)
    {
        ArgumentException.ThrowIfNullOrEmpty(outputDirectory);
        var entries = Resolve(parameters);
        long total = ParameterSpec.TotalCount(parameters);
        if (theta.Length != total)
            throw new ArgumentException($"θ has {theta.Length} values but the parameters total P = {total}.", nameof(theta));

        string target = Path.GetFullPath(outputDirectory.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
        if (string.Equals(target, Directory, StringComparison.Ordinal))
            throw new IOException($"Refusing to write the updated adapter over its source folder '{outputDirectory}'.");
        CheckTarget(target, outputDirectory);
        string parent = Path.GetDirectoryName(target) ?? throw new ArgumentException($"'{outputDirectory}' has no parent folder.", nameof(outputDirectory));
        System.IO.Directory.CreateDirectory(parent);
        string temporary = Path.Combine(parent, $".{Path.GetFileName(target)}.tmp-{Guid.NewGuid():N}");
        System.IO.Directory.CreateDirectory(temporary);
        try
        {
            using (var config = new FileStream(Path.Combine(temporary, ConfigFileName), FileMode.CreateNew, FileAccess.Write))
            {
                config.Write(_configBytes);
                config.Flush(flushToDisk: true);
            }

            var current = SafetensorsHeader.ReadFile(WeightsPath);
            if (!current.RawHeaderBytes.Span.SequenceEqual(Header.RawHeaderBytes.Span) || current.FileLength != Header.FileLength)
                throw new IOException($"Adapter '{Directory}': {WeightsFileName} changed since it was opened.");

            fixed (double* pointer = theta)
            {
                var replacements = new Dictionary<string, ReadOnlyMemory<double>>(StringComparer.Ordinal);
                long at = 0;
                foreach (var entry in entries)
                {
                    var memory = new PointerMemoryManager<double>(pointer + at, (int)entry.ElementCount).Memory;
                    replacements.Add(entry.Name, memory);
                    at += entry.ElementCount;
                }
                SafetensorsWriter.RewriteWith(WeightsPath, Path.Combine(temporary, WeightsFileName), replacements);
            }

            CheckTarget(target, outputDirectory);
            if (System.IO.Directory.Exists(target))
                System.IO.Directory.Delete(target);
            System.IO.Directory.Move(temporary, target);
        }
        catch (Exception e)
        {
            try
            {
                System.IO.Directory.Delete(temporary, recursive: true);
            }
            catch (Exception cleanup) when (cleanup is IOException or UnauthorizedAccessException)
            {
            }
            // The user names the output folder; the staging folder beside it is ours and must not appear in messages.
            if (e is IOException or UnauthorizedAccessException && e.Message.Contains(temporary, StringComparison.Ordinal))
                throw new IOException($"Could not write the adapter to '{outputDirectory}' (nothing was written): {e.Message.Replace(temporary, target, StringComparison.Ordinal)}", e);
            throw;
        }
    }

    /// <summary>
    /// Checks, before any work, that <see cref="WriteUpdated"/> can create <paramref name="outputDirectory"/>: it is not a
    /// file, not a non-empty folder, and the nearest existing folder on its path accepts new entries (probed by creating and
    /// removing one). Messages name the user's path, never the probe.
    /// </summary>
    public static void CheckWritable(string outputDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(outputDirectory);
        string target = Path.GetFullPath(outputDirectory.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
        CheckTarget(target, outputDirectory);
        string? existing = Path.GetDirectoryName(target);
        while (existing is not null && !System.IO.Directory.Exists(existing))
        {
            if (File.Exists(existing))
                throw new IOException($"Cannot write the adapter to '{outputDirectory}': '{existing}' is a file, not a folder.");
            existing = Path.GetDirectoryName(existing);
        }
        if (existing is null)
            throw new IOException($"Cannot write the adapter to '{outputDirectory}': no existing folder on its path.");
        string probe = Path.Combine(existing, $".eraser-probe-{Guid.NewGuid():N}");
        try
        {
            System.IO.Directory.CreateDirectory(probe);
            System.IO.Directory.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            string reason = e is UnauthorizedAccessException ? "permission denied" : e.GetType().Name;
            throw new IOException($"Cannot write the adapter to '{outputDirectory}': folders cannot be created in '{existing}' ({reason}).", e);
        }
    }

    private static void CheckTarget(string target, string shown)
    {
        if (File.Exists(target))
            throw new IOException($"Refusing to write the adapter to '{shown}': a file of that name exists.");
        if (System.IO.Directory.Exists(target) && System.IO.Directory.EnumerateFileSystemEntries(target).Any())
            throw new IOException($"Refusing to write the adapter into '{shown}': the folder exists and is not empty.");
    }

    /// <summary>Checks the specs against the file: unique names, present, same shape, F32/F16/BF16.</summary>
    private List<SafetensorsEntry> Resolve(IReadOnlyList<ParameterSpec> parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var entries = new List<SafetensorsEntry>(parameters.Count);
        foreach (var spec in parameters)
        {
            if (!seen.Add(spec.Name))
                throw new InvalidDataException($"Parameter '{spec.Name}' is listed twice.");
            if (!Header.TryGet(spec.Name, out var entry))
                throw new InvalidDataException($"Adapter '{Directory}': {WeightsFileName} has no tensor '{spec.Name}' (listed as a parameter).");
            if (!entry.Shape.SequenceEqual(spec.Shape))
                throw new InvalidDataException(
                    $"Adapter '{Directory}': tensor '{spec.Name}' has shape {ShapeMath.Format(entry.Shape)} but the parameter list says {ShapeMath.Format(spec.Shape)}.");
            if (!DTypeConversion.IsStorageFloat(entry.DType))
                throw new InvalidDataException(
                    $"Adapter '{Directory}': tensor '{spec.Name}' is {entry.DType}; parameters must be F32, F16 or BF16.");
            entries.Add(entry);
        }
        return entries;
    }

    private void ReadEntry(Microsoft.Win32.SafeHandles.SafeFileHandle handle, SafetensorsEntry entry, byte[] buffer, Span<double> destination)
    {
        int size = entry.ElementSize;
        int chunkElements = buffer.Length / size;
        long offset = Header.FileOffsetOf(entry);
        for (int done = 0; done < destination.Length; done += chunkElements)
        {
            int count = Math.Min(chunkElements, destination.Length - done);
            var raw = buffer.AsSpan(0, count * size);
            FileRead.ReadExactly(handle, raw, offset + (long)done * size, WeightsFileName);
            DTypeConversion.ToDouble(entry.DType, raw, destination.Slice(done, count));
        }
    }
}
