namespace EraserWorker.Cli.Output;

public static class ProcessMemory
{
    /// <summary>Peak resident memory of this process (VmHWM on Linux; the managed peak elsewhere).</summary>
    public static long PeakBytes()
    {
        const string status = "/proc/self/status";
        if (File.Exists(status))
            foreach (var line in File.ReadLines(status))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        return Environment.WorkingSet;
    }
}
