using System.CommandLine;
using EraserWorker.Cli.Commands;

namespace EraserWorker.Cli;

public static class EraserCommandLine
{
    public static RootCommand Build()
    {
        var root = new RootCommand("eraser — remove or correct training samples of a LoRA adapter without retraining.");
        root.Subcommands.Add(UnlearnCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        OperatorCommands.AddTo(root);
        root.Subcommands.Add(ModelCacheCommand.Create());
        root.Subcommands.Add(ModelTrainCommand.Create());
        root.Subcommands.Add(ModelEvalCommand.Create());
        ModelBenchCommand.AddTo(root);
        root.Subcommands.Add(ExperimentCommand.Create());
        return root;
    }
}
