using EraserWorker.Cli;

namespace EraserWorker.TestSupport;

/// <summary>Runs <c>eraser</c> in-process with the console's output and error captured (shared by the core and model
/// tests; their collections do not run in parallel with console-writing tests).</summary>
public static class ConsoleCli
{
    public static (int Exit, string Out, string Err) Run(params string[] args)
    {
        var (stdout, stderr) = (Console.Out, Console.Error);
        var (o, e) = (new StringWriter(), new StringWriter());
        Console.SetOut(o);
        Console.SetError(e);
        try
        {
            int exit = EraserCommandLine.Run(args, new System.CommandLine.InvocationConfiguration { Output = o, Error = e });
            return (exit, o.ToString(), e.ToString());
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }
}
