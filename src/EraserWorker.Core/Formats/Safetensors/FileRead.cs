using Microsoft.Win32.SafeHandles;

namespace EraserWorker.Core.Formats.Safetensors;

/// <summary>Positioned reads that loop until the span is full (RandomAccess.Read may return short counts).</summary>
internal static class FileRead
{
    /// <summary>Reads until <paramref name="buffer"/> is full or the file ends; returns the bytes read.</summary>
    public static int ReadAtMost(SafeFileHandle handle, Span<byte> buffer, long offset)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = RandomAccess.Read(handle, buffer[total..], offset + total);
            if (n == 0)
                break;
            total += n;
        }
        return total;
    }

    /// <summary>Fills <paramref name="buffer"/> from <paramref name="offset"/> or throws (naming <paramref name="fileName"/>).</summary>
    public static void ReadExactly(SafeFileHandle handle, Span<byte> buffer, long offset, string fileName)
    {
        if (ReadAtMost(handle, buffer, offset) != buffer.Length)
            throw new InvalidDataException(
                $"{fileName}: the file is shorter than expected (reading {buffer.Length} bytes at offset {offset}) — was it truncated or modified?");
    }
}
