using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.Safetensors;
using Microsoft.Win32.SafeHandles;

namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>
/// Writes an <c>eraser.gradcache/v1</c> gradient cache (or a replacement set — the same format) row by row.
/// </summary>
/// <remarks>
/// <para>Rows are streamed to disk as they are appended (memory is bounded by two 1 MB write buffers, not by a shard),
/// into <c>shard-NNNNN.safetensors</c> / <c>shard-NNNNN.ids</c> files of at most <c>rowsPerShard</c> rows, inside a
/// temporary sibling folder of the target. <see cref="Complete"/> writes <c>cache.json</c> last and renames the
/// folder into place, so the target never exists half-written; <see cref="Dispose"/> without
/// <see cref="Complete"/> deletes the temporary folder.</para>
/// <para>Inside a shard, gradient rows are written at their final offsets. Curvature rows are written at the offset
/// they have in a full shard; a short last shard moves them down once when it is finished.</para>
/// <para>Not thread-safe. The shard files (layout, header, buffered regions) are in <c>GradientCacheWriter.Shards.cs</c>.</para>
/// </remarks>
public sealed partial class GradientCacheWriter : IDisposable
{
    private const int BufferBytes = 1 << 20;

    private readonly string _temporary;
    private readonly IReadOnlyList<ParameterSpec> _parameters;
    private readonly ParameterLayout _layout;
    private readonly double _l2;
    private readonly JsonObject? _extra;
    private readonly int _rowsPerShard;
    private readonly int _elementSize;
    private readonly long _rowBytes;
    private readonly int _reservedHeader;
    private readonly HashSet<string> _ids = new(StringComparer.Ordinal);
    private readonly List<ShardRef> _finished = [];
    private ShardWriter? _current;
    private State _state;

    private enum State { Open, Completed, Faulted, Disposed }

    private GradientCacheWriter(string directory, string temporary, IReadOnlyList<ParameterSpec> parameters, double l2,
        string dtype, bool withCurvature, int rowsPerShard, JsonObject? extra)
    {
        Directory = directory;
        _temporary = temporary;
        _parameters = parameters.ToArray();
        _layout = new ParameterLayout(_parameters);
        _l2 = l2;
        _extra = extra is null ? null : (JsonObject)extra.DeepClone();
        StorageDType = dtype;
        HasCurvature = withCurvature;
        _rowsPerShard = rowsPerShard;
        _elementSize = DTypeConversion.ElementSize(dtype);
        _rowBytes = checked(_layout.Total * _elementSize);
        checked
        {
            _ = (withCurvature ? 2 : 1) * _rowBytes * rowsPerShard;
        }
        _reservedHeader = ShardHeader(rowsPerShard).Length;
    }

    /// <summary>The target folder (full path); it exists only after <see cref="Complete"/>.</summary>
    public string Directory { get; }

    public IReadOnlyList<ParameterSpec> Parameters => _parameters;

    /// <summary>P: the length of every row.</summary>
    public long ParameterCount => _layout.Total;

    public string StorageDType { get; }

    public bool HasCurvature { get; }

    /// <summary>Rows appended so far.</summary>
    public int RowCount => _ids.Count;

    /// <summary>
    /// Starts a cache in a temporary sibling folder of <paramref name="directory"/>.
    /// </summary>
    /// <param name="directory">The target folder: must not exist, or be empty. Its parent is created if needed.</param>
    /// <param name="parameters">θ's tensors in θ's order (non-empty, unique names).</param>
    /// <param name="l2">The objective's L2 weight (finite, ≥ 0).</param>
    /// <param name="dtype">Storage dtype: F32, F16 or BF16.</param>
    /// <param name="withCurvature">Whether every row has a curvature factor.</param>
    /// <param name="rowsPerShard">Rows per shard file (≥ 1).</param>
    /// <param name="extra">Additional cache.json fields (e.g. adapter sha256, producer); not format, parameters, l2 or shards.</param>
    /// <exception cref="IOException">The target folder exists and is not empty.</exception>
    public static GradientCacheWriter Create(string directory, IReadOnlyList<ParameterSpec> parameters, double l2,
        string dtype = DTypeConversion.F32, bool withCurvature = false, int rowsPerShard = 4096, JsonObject? extra = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(parameters);
        if (!DTypeConversion.IsStorageFloat(dtype))
            throw new ArgumentException($"Storage dtype must be F32, F16 or BF16 (got '{dtype}').", nameof(dtype));
        ArgumentOutOfRangeException.ThrowIfLessThan(rowsPerShard, 1);
        // Validates parameters, l2 and extra the way a reader will.
        _ = new GradientCacheManifest(parameters, l2, [new ShardRef(ShardFile(0), IdsFile(0))], extra);

        string full = Path.GetFullPath(directory.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
        if (System.IO.Directory.Exists(full) && System.IO.Directory.EnumerateFileSystemEntries(full).Any())
            throw new IOException($"Refusing to write the gradient cache into '{directory}': the folder exists and is not empty.");
        if (File.Exists(full))
            throw new IOException($"Refusing to write the gradient cache to '{directory}': a file of that name exists.");
        string parent = Path.GetDirectoryName(full) ?? throw new ArgumentException($"'{directory}' has no parent folder.", nameof(directory));
        System.IO.Directory.CreateDirectory(parent);
        string temporary = Path.Combine(parent, $".{Path.GetFileName(full)}.tmp-{Guid.NewGuid():N}");
        System.IO.Directory.CreateDirectory(temporary);
        try
        {
            return new GradientCacheWriter(full, temporary, parameters, l2, dtype, withCurvature, rowsPerShard, extra);
        }
        catch
        {
            TryDeleteDirectory(temporary);
            throw;
        }
    }

    /// <summary>Appends one sample's row(s).</summary>
    /// <param name="id">Non-empty, no line breaks, ≤ 256 characters, unique in the cache (see <see cref="SampleIds"/>).</param>
    /// <param name="gradient">gᵢ: P finite values, representable in the storage dtype.</param>
    /// <param name="curvature">cᵢ: P values if the cache has curvature, else empty.</param>
    /// <exception cref="ArgumentException">Invalid id, duplicate id, wrong length or a non-finite / overflowing value;
    /// nothing is written and the writer stays usable.</exception>
    public void Append(string id, ReadOnlySpan<float> gradient, ReadOnlySpan<float> curvature = default) =>
        AppendRow(id, gradient, curvature);

    /// <inheritdoc cref="Append(string, ReadOnlySpan{float}, ReadOnlySpan{float})"/>
    /// <remarks>Values are rounded once, directly from double precision, to the storage dtype.</remarks>
    public void Append(string id, ReadOnlySpan<double> gradient, ReadOnlySpan<double> curvature = default) =>
        AppendRow(id, gradient, curvature);

    /// <summary>One path for both precisions: T is float or double (the public overloads guarantee it).</summary>
    private void AppendRow<T>(string id, ReadOnlySpan<T> gradient, ReadOnlySpan<T> curvature) where T : unmanaged
    {
        CheckRow(id, gradient.Length, curvature.Length);
        CheckRepresentable(id, "gradient", gradient);
        if (HasCurvature)
            CheckRepresentable(id, "curvature", curvature);
        var shard = PrepareShard();
        try
        {
            EncodeRow(shard.Gradients, gradient);
            if (HasCurvature)
                EncodeRow(shard.Curvature!, curvature);
        }
        catch
        {
            _state = State.Faulted;
            throw;
        }
        Commit(shard, id);
    }

    private void CheckRepresentable<T>(string id, string what, ReadOnlySpan<T> values) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            var floats = MemoryMarshal.Cast<T, float>(values);
            int bad = DTypeConversion.IndexOfNotRepresentable(StorageDType, floats);
            CheckValues(id, what, bad, bad >= 0 ? floats[bad] : 0);
        }
        else
        {
            var doubles = MemoryMarshal.Cast<T, double>(values);
            int bad = DTypeConversion.IndexOfNotRepresentable(StorageDType, doubles);
            CheckValues(id, what, bad, bad >= 0 ? doubles[bad] : 0);
        }
    }

    private void EncodeRow<T>(RegionWriter region, ReadOnlySpan<T> values) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
            Encode(region, MemoryMarshal.Cast<T, float>(values));
        else
            Encode(region, MemoryMarshal.Cast<T, double>(values));
    }

    /// <summary>Finishes the last shard, writes <c>cache.json</c> and renames the temporary folder to
    /// <see cref="Directory"/>. On failure the temporary folder is deleted.</summary>
    /// <exception cref="InvalidOperationException">No rows were appended (the writer stays usable).</exception>
    /// <exception cref="IOException">The target folder appeared and is not empty.</exception>
    public void Complete()
    {
        ThrowIfNotOpen();
        if (RowCount == 0)
            throw new InvalidOperationException("A gradient cache needs at least one row; nothing was appended.");
        try
        {
            if (_current is not null)
                FinishShard();
            var manifest = new GradientCacheManifest(_parameters, _l2, _finished, _extra);
            manifest.Save(Path.Combine(_temporary, GradientCacheManifest.FileName));
            if (System.IO.Directory.Exists(Directory))
            {
                if (System.IO.Directory.EnumerateFileSystemEntries(Directory).Any())
                    throw new IOException($"Refusing to complete the gradient cache '{Directory}': the folder appeared meanwhile and is not empty.");
                System.IO.Directory.Delete(Directory);
            }
            System.IO.Directory.Move(_temporary, Directory);
            _state = State.Completed;
        }
        catch
        {
            _state = State.Faulted;
            _current?.Dispose();
            _current = null;
            TryDeleteDirectory(_temporary);
            throw;
        }
    }

    /// <summary>Without <see cref="Complete"/>: abandons the cache and deletes the temporary folder.</summary>
    public void Dispose()
    {
        if (_state is State.Disposed or State.Completed)
            return;
        _current?.Dispose();
        _current = null;
        TryDeleteDirectory(_temporary);
        _state = State.Disposed;
    }

    // ------------------------------------------------------------------ rows

    private void CheckRow(string id, int gradientLength, int curvatureLength)
    {
        ThrowIfNotOpen();
        string? problem = SampleIds.Problem(id);
        if (problem is not null)
            throw new ArgumentException($"Invalid sample id '{id}': {problem}.", nameof(id));
        if (_ids.Contains(id))
            throw new ArgumentException($"Duplicate sample id '{id}': it was already appended.", nameof(id));
        if (gradientLength != ParameterCount)
            throw new ArgumentException($"Sample '{id}': the gradient has {gradientLength} values; P = {ParameterCount}.", "gradient");
        if (HasCurvature && curvatureLength != ParameterCount)
            throw new ArgumentException($"Sample '{id}': the curvature row has {curvatureLength} values; P = {ParameterCount} (this cache has curvature rows).", "curvature");
        if (!HasCurvature && curvatureLength != 0)
            throw new ArgumentException($"Sample '{id}': a curvature row was given but the cache was created without curvature.", "curvature");
    }

    private void CheckValues(string id, string what, int bad, double value)
    {
        if (bad >= 0)
            throw new ArgumentException(
                $"Sample '{id}': the {what} has the value {value} at {_layout.Describe(bad)}, which is not a finite {StorageDType} value.", what);
    }

    private ShardWriter PrepareShard()
    {
        if (_current is null)
        {
            try
            {
                _current = new ShardWriter(this, _finished.Count);
            }
            catch
            {
                _state = State.Faulted;
                throw;
            }
        }
        return _current;
    }

    private void Commit(ShardWriter shard, string id)
    {
        shard.Ids.Add(id);
        _ids.Add(id);
        if (shard.Ids.Count == _rowsPerShard)
        {
            try
            {
                FinishShard();
            }
            catch
            {
                _state = State.Faulted;
                throw;
            }
        }
    }

    private void Encode(RegionWriter region, ReadOnlySpan<float> values)
    {
        while (!values.IsEmpty)
        {
            if (region.FreeBytes < _elementSize)
                region.Flush();
            int n = Math.Min(values.Length, region.FreeBytes / _elementSize);
            DTypeConversion.FromSingle(StorageDType, values[..n], region.Free[..(n * _elementSize)]);
            region.Advance(n * _elementSize);
            values = values[n..];
        }
    }

    private void Encode(RegionWriter region, ReadOnlySpan<double> values)
    {
        while (!values.IsEmpty)
        {
            if (region.FreeBytes < _elementSize)
                region.Flush();
            int n = Math.Min(values.Length, region.FreeBytes / _elementSize);
            DTypeConversion.FromDouble(StorageDType, values[..n], region.Free[..(n * _elementSize)]);
            region.Advance(n * _elementSize);
            values = values[n..];
        }
    }

    private void ThrowIfNotOpen()
    {
        switch (_state)
        {
            case State.Completed: throw new InvalidOperationException("The gradient cache is already complete.");
            case State.Faulted: throw new InvalidOperationException("The gradient cache writer failed earlier; dispose it and start again.");
            case State.Disposed: throw new ObjectDisposedException(nameof(GradientCacheWriter));
        }
    }

    private static void TryDeleteDirectory(string path)
    {
        try
        {
            if (System.IO.Directory.Exists(path))
                System.IO.Directory.Delete(path, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
