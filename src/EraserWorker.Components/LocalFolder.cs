namespace EraserWorker.Components;

/// <summary>The worker's local working folders (downloads, versions being written): removed when no longer needed.</summary>
public static class LocalFolder
{
    /// <summary>Deletes a folder and everything in it; a failure is ignored (the work folder is scratch space, and a folder
    /// still in use by the OS is removed with the next eviction or restart).</summary>
    public static void TryDelete(string directory)
    {
        try
        {
            if (Directory.Exists(directory))
                Directory.Delete(directory, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
