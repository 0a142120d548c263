using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace EraserWorker.Cli.Benchmarks;

/// <summary>
/// Evicts files from the operating system's page cache (Linux: fsync, then posix_fadvise DONTNEED), so that a
/// benchmark's next read of them comes from the disk. Only these files are affected, nothing else on the machine.
/// </summary>
internal static class PageCache
{
    private const int DontNeed = 4; // POSIX_FADV_DONTNEED

    [DllImport("libc", EntryPoint = "posix_fadvise")]
    private static extern int Fadvise(int fd, long offset, long length, int advice);

    /// <returns>False where it is not supported (then reads may come from memory).</returns>
    public static bool Evict(IEnumerable<string> files)
    {
        if (!OperatingSystem.IsLinux())
            return false;
        bool ok = true;
        foreach (var file in files)
        {
            using var stream = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
            stream.Flush(flushToDisk: true);
            SafeFileHandle handle = stream.SafeFileHandle;
            ok &= Fadvise((int)handle.DangerousGetHandle(), 0, 0, DontNeed) == 0;
        }
        return ok;
    }
}
