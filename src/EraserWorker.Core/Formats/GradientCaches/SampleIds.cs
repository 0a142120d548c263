using System.Buffers;
using System.Text;

namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>Rules for sample ids (SPEC §3): opaque non-empty strings, valid Unicode (so valid UTF-8), without line
/// breaks (any character Python's <c>str.splitlines</c> splits on, so ids files read the same everywhere), at most
/// 256 characters (counted as Unicode scalar values, as Python's <c>len</c> does).</summary>
public static class SampleIds
{
    public const int MaxLength = 256;

    /// <summary>Null when <paramref name="id"/> is a valid sample id, else a short description of the problem.</summary>
    public static string? Problem(string? id)
    {
        if (string.IsNullOrEmpty(id))
            return "the id is empty";
        var rest = id.AsSpan();
        int count = 0;
        while (!rest.IsEmpty)
        {
            if (Rune.DecodeFromUtf16(rest, out var rune, out int used) != OperationStatus.Done)
                return "the id contains an unpaired surrogate (not valid Unicode)";
            if (rune.Value is '\n' or '\r' or 0x0B or 0x0C or 0x1C or 0x1D or 0x1E or 0x85 or 0x2028 or 0x2029)
                return rune.Value == '\r' ? "the id contains a carriage return ('\\r')" : "the id contains a line break";
            count++;
            rest = rest[used..];
        }
        return count > MaxLength ? $"the id has {count} characters (at most {MaxLength} allowed)" : null;
    }

    public static bool IsValid(string? id) => Problem(id) is null;
}
