"""`python -m trainbench.inspect`: the user's command for Q1-Q4 (the code is trainbench.questions)."""

if __name__ == "__main__":
    from trainbench.questions import main

    main()
