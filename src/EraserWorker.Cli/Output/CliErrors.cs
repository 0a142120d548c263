using System.Text.Json;
using EraserWorker.Core.Influence;

namespace EraserWorker.Cli.Output;

public static class CliJson
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web) { WriteIndented = false };
}

/// <summary>Turns a failure into exit code 1 and one line on standard error; nothing else is printed.</summary>
public static class CliErrors
{
    public static int Run(Func<int> action)
    {
        try
        {
            return action();
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("eraser: cancelled");
            return 130;
        }
        catch (UnlearningException e)
        {
            Console.Error.WriteLine($"eraser: {e.Code}: {OneLine(e.Message)}");
            return 1;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or InvalidOperationException or UnauthorizedAccessException or JsonException)
        {
            Console.Error.WriteLine($"eraser: {OneLine(e.Message)}");
            return 1;
        }
    }

    public static async Task<int> RunAsync(Func<Task<int>> action)
    {
        try
        {
            return await action();
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return Run(() => throw e);
        }
    }

    private static string OneLine(string message) => message.ReplaceLineEndings(" ");
}
