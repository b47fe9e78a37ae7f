"""nbgrader configuration of the effilab course.

``python -m grader`` applies it programmatically; the course root (grader/course/) also gets an
``nbgrader_config.py`` that calls :func:`apply`, so plain ``nbgrader`` commands run from there agree.
"""


def apply(c) -> None:
    c.CourseDirectory.course_id = "effilab"
    # What a solution region becomes in the student's notebook.
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
    # Grading runs whole notebooks, Triton's interpreter included on a CPU: be generous per cell,
    # and interrupt (not hang) a cell that runs away.
    c.Execute.timeout = 1800
    c.Execute.interrupt_on_timeout = True  # (nbgrader's Execute always goes on after a failing cell)
    # Feedback must explain a failed hidden test without showing its code.
    c.GenerateFeedback.preprocessors = [
        "nbgrader.preprocessors.GetGrades",
        "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
        "grader.feedback.ScrubHiddenTests",
    ]
    c.Autograde.create_student = True
    c.GenerateAssignment.create_assignment = True


if __name__ == "__main__" or "get_config" in globals():  # loaded by nbgrader itself
    apply(get_config())  # noqa: F821
