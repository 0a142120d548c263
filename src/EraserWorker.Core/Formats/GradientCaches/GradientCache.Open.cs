using System.Text;
using EraserWorker.Core.Formats.Safetensors;
using Microsoft.Win32.SafeHandles;

namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>Opening a cache folder: every rule of SPEC §2 checked before a row is read.</summary>
public sealed partial class GradientCache
{
    /// <summary>Opens and validates a cache folder. Nothing is written anywhere.</summary>
    /// <exception cref="GradientCacheException">The folder is not a valid cache; the message names the cache, the file
    /// and the problem.</exception>
    public static GradientCache Open(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        string full = Path.GetFullPath(directory);
        string label = $"Gradient cache '{directory}'";
        if (!System.IO.Directory.Exists(full))
            throw new GradientCacheException($"{label}: the folder does not exist.");

        var opened = new List<SafeFileHandle>();
        try
        {
            var manifest = GradientCacheManifest.Load(Path.Combine(full, GradientCacheManifest.FileName));
            long p = manifest.ParameterCount;
            var shards = new Shard[manifest.Shards.Count];
            var ids = new List<string>();
            var rowOf = new Dictionary<string, int>(StringComparer.Ordinal);
            string? dtype = null;
            bool? hasCurvature = null;
            for (int s = 0; s < shards.Length; s++)
            {
                var (file, idsFile) = manifest.Shards[s];
                string path = Path.Combine(full, file);
                if (!File.Exists(path))
                    throw Problem(file, "missing (listed in cache.json)");
                var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
                opened.Add(handle);
                var header = SafetensorsHeader.Read(handle, file);

                if (!header.TryGet("gradients", out var gradients))
                    throw Problem(file, "has no 'gradients' tensor");
                if (gradients.Shape.Count != 2)
                    throw Problem(file, $"'gradients' has shape {ShapeMath.Format(gradients.Shape)}; expected 2-D [rows, P] with P = {p}");
                if (!DTypeConversion.IsStorageFloat(gradients.DType))
                    throw Problem(file, $"'gradients' is stored as {gradients.DType}; expected F32, F16 or BF16");
                if (gradients.Shape[1] != p)
                    throw Problem(file,
                        $"'gradients' has {gradients.Shape[1]} columns but the parameters in cache.json total P = {p}");
                if (dtype is null)
                    dtype = gradients.DType;
                else if (dtype != gradients.DType)
                    throw Problem(file, $"stores {gradients.DType} but {manifest.Shards[0].File} stores {dtype} (all shards must agree)");

                header.TryGet("curvature", out var curvature);
                if (hasCurvature is null)
                    hasCurvature = curvature is not null;
                else if (hasCurvature != (curvature is not null))
                    throw Problem(file, curvature is not null
                        ? $"has a 'curvature' tensor but {manifest.Shards[0].File} has none (all shards or none)"
                        : $"has no 'curvature' tensor but {manifest.Shards[0].File} has one (all shards or none)");
                if (curvature is not null)
                {
                    if (!curvature.Shape.SequenceEqual(gradients.Shape))
                        throw Problem(file, $"'curvature' has shape {ShapeMath.Format(curvature.Shape)} but 'gradients' has {ShapeMath.Format(gradients.Shape)}");
                    if (curvature.DType != gradients.DType)
                        throw Problem(file, $"'curvature' is stored as {curvature.DType} but 'gradients' as {gradients.DType}");
                }

                long rows = gradients.Shape[0];
                if (ids.Count + rows > Array.MaxLength)
                    throw Problem(file, "too many rows in total");
                string idsPath = Path.Combine(full, idsFile);
                if (!File.Exists(idsPath))
                    throw Problem(idsFile, "missing (listed in cache.json)");
                var shardIds = ReadIds(idsPath, idsFile);
                if (shardIds.Count != rows)
                    throw Problem(idsFile, $"has {shardIds.Count} ids but {file} has {rows} rows");
                for (int k = 0; k < shardIds.Count; k++)
                {
                    if (rowOf.TryGetValue(shardIds[k], out int previous))
                    {
                        var (prevShard, prevLine) = previous >= ids.Count
                            ? (idsFile, previous - ids.Count + 1)
                            : Locate(shards, previous);
                        throw Problem(idsFile, $"line {k + 1}: duplicate sample id '{shardIds[k]}' (already at line {prevLine} of {prevShard})");
                    }
                    rowOf.Add(shardIds[k], ids.Count + k);
                }

                shards[s] = new Shard(file, idsFile, handle, header, header.FileOffsetOf(gradients),
                    curvature is null ? -1 : header.FileOffsetOf(curvature), ids.Count, (int)rows);
                ids.AddRange(shardIds);
            }
            return new GradientCache(full, label, manifest, shards, ids.ToArray(), rowOf, dtype!, hasCurvature ?? false);
        }
        catch (Exception e) when (e is InvalidDataException or GradientCacheException)
        {
            foreach (var h in opened)
                h.Dispose();
            throw new GradientCacheException($"{label}: {e.Message}", e);
        }
        catch
        {
            foreach (var h in opened)
                h.Dispose();
            throw;
        }

        static (string File, int Line) Locate(Shard?[] shards, int row)
        {
            foreach (var s in shards)
                if (s is not null && row >= s.FirstRow && row < s.FirstRow + s.Rows)
                    return (s.IdsFile, row - s.FirstRow + 1);
            throw new InvalidOperationException("unreachable");
        }
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Reads an ids file: strict UTF-8 (a leading BOM is ignored), one id per line, '\n'-separated, an
    /// optional final newline; every id must satisfy <see cref="SampleIds"/>.</summary>
    private static List<string> ReadIds(string path, string fileName)
    {
        byte[] bytes = File.ReadAllBytes(path);
        string text;
        try
        {
            text = StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw Problem(fileName, $"not valid UTF-8 (at byte {e.Index})");
        }
        if (text.StartsWith('\uFEFF'))
            text = text[1..];
        var ids = new List<string>();
        if (text.Length == 0)
            return ids;
        var lines = text.Split('\n');
        int count = lines[^1].Length == 0 ? lines.Length - 1 : lines.Length;
        for (int k = 0; k < count; k++)
        {
            string? problem = SampleIds.Problem(lines[k]);
            if (problem is not null)
                throw Problem(fileName, $"line {k + 1}: {problem}");
            ids.Add(lines[k]);
        }
        return ids;
    }

    private static GradientCacheException Problem(string file, string problem) => new($"{file}: {problem}.");
}
