using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using EraserWorker.Contracts;

namespace EraserWorker.Storage.Layout;

/// <summary>
/// The blob names of SPEC §4, the only place that builds them:
/// <code>
/// adapters/&lt;adapterId&gt;/head.json                       {"adapterId","version","updatedAt"}; replaced only with If-Match
/// adapters/&lt;adapterId&gt;/versions/&lt;NNNNNN&gt;/...            adapter_config.json, adapter_model.safetensors, manifest.json (last)
/// adapters/&lt;adapterId&gt;/cache/...                       the base gradient cache (cache.json last)
/// adapters/&lt;adapterId&gt;/replacements/&lt;name&gt;/...         replacement sets (cache.json last)
/// adapters/&lt;adapterId&gt;/model/...                       optional: the base model and tokenizer (registered with the adapter)
/// adapters/&lt;adapterId&gt;/training/...                    optional: the registered training texts
/// adapters/&lt;adapterId&gt;/requests/&lt;sha256&gt;.json          which version applied a request (redelivery detection)
/// adapters/&lt;adapterId&gt;/claims/&lt;NNNNNN&gt;.json             transient: who is writing a version right now
/// </code>
/// Names are built only from ids that pass <see cref="RequestValidation.IsValidAdapterId"/> and
/// <see cref="IsStorableAdapterId"/>, version numbers 0–999999, names matching
/// <see cref="RequestValidation.ReplacementNamePattern"/> and local file names matching <see cref="LocalFileNamePattern"/>;
/// anything else throws <see cref="ArgumentException"/>.
/// </summary>
internal static partial class BlobLayout
{
    public const int MaxVersion = 999_999;

    /// <summary>Names of local files (each path segment) that may be uploaded or downloaded.</summary>
    public const string LocalFileNamePattern = @"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$(?!\n)";

    /// <summary>Segment names an adapter id may not use after its first segment: the adapter one level up uses them for
    /// its own data (<c>a/cache</c> would live inside adapter <c>a</c>'s cache).</summary>
    public static IReadOnlyList<string> ReservedSegments { get; } =
        [StoredFileNames.Head, "versions", "cache", "replacements", "claims", "model", "training", "requests"];

    [GeneratedRegex(LocalFileNamePattern, RegexOptions.CultureInvariant)]
    public static partial Regex LocalFileName();

    public static bool IsStorableAdapterId(string? adapterId)
    {
        if (!RequestValidation.IsValidAdapterId(adapterId))
            return false;
        var segments = adapterId!.Split('/');
        for (int i = 1; i < segments.Length; i++)
        {
            if (ReservedSegments.Contains(segments[i]))
                return false;
        }
        return true;
    }

    public static void CheckAdapterId(string adapterId)
    {
        if (!RequestValidation.IsValidAdapterId(adapterId))
            throw new ArgumentException($"Invalid adapter id '{adapterId}': expected 1–{RequestValidation.MaxAdapterIdLength} characters of [a-z0-9._-] in '/'-separated segments, none empty, '.' or '..'.", nameof(adapterId));
        if (!IsStorableAdapterId(adapterId))
            throw new ArgumentException($"Adapter id '{adapterId}' uses a reserved segment name ({string.Join(", ", ReservedSegments)}) after its first segment.", nameof(adapterId));
    }

    public static void CheckVersion(int version, int min)
    {
        if (version < min || version > MaxVersion)
            throw new ArgumentOutOfRangeException(nameof(version), version, $"Version must be between {min} and {MaxVersion}.");
    }

    /// <summary><c>adapters/&lt;adapterId&gt;/</c>.</summary>
    public static string Adapter(string adapterId)
    {
        CheckAdapterId(adapterId);
        return $"adapters/{adapterId}/";
    }

    public static string Head(string adapterId) => Adapter(adapterId) + StoredFileNames.Head;

    public static string Versions(string adapterId) => Adapter(adapterId) + "versions/";

    /// <summary><c>adapters/&lt;adapterId&gt;/versions/&lt;NNNNNN&gt;/</c>.</summary>
    public static string Version(string adapterId, int version)
    {
        CheckVersion(version, 0);
        return Versions(adapterId) + Number(version) + "/";
    }

    public static string Manifest(string adapterId, int version) => Version(adapterId, version) + StoredFileNames.Manifest;

    public static string Cache(string adapterId) => Adapter(adapterId) + "cache/";

    /// <summary>Files derived from the cache by the worker (the Gram), each self-checking: <c>cache/derived/</c>.</summary>
    public static string CacheDerived(string adapterId) => Cache(adapterId) + DerivedFolder + "/";

    public const string DerivedFolder = "derived";

    public static string Model(string adapterId) => Adapter(adapterId) + "model/";

    public static string Training(string adapterId) => Adapter(adapterId) + "training/";

    public static string Replacements(string adapterId, string name)
    {
        if (!RequestValidation.IsValidReplacementName(name))
            throw new ArgumentException($"Invalid replacement-set name '{name}' (expected {RequestValidation.ReplacementNamePattern}).", nameof(name));
        return Adapter(adapterId) + "replacements/" + name + "/";
    }

    public static string Claims(string adapterId) => Adapter(adapterId) + "claims/";

    public static string Claim(string adapterId, int version) => Claims(adapterId) + Number(version) + ".json";

    public static string Requests(string adapterId) => Adapter(adapterId) + "requests/";

    /// <summary>The marker of one request. Request ids are any printable characters (SPEC §3), so the blob is named by
    /// the SHA-256 of the id; the marker holds the id itself.</summary>
    public static string RequestMarker(string adapterId, string requestId) =>
        Requests(adapterId) + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(requestId))) + ".json";

    /// <summary>The version number a name below <c>versions/</c> or <c>claims/</c> starts with, or null.</summary>
    public static int? VersionNumber(string rest) =>
        rest.Length >= 6 && int.TryParse(rest.AsSpan(0, 6), NumberStyles.None, CultureInfo.InvariantCulture, out int v) && (rest.Length == 6 || rest[6] is '/' or '.')
            ? v
            : null;

    private static string Number(int version) => version.ToString("D6", CultureInfo.InvariantCulture);
}
